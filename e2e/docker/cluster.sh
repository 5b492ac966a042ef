#!/usr/bin/env bash
# Three RaftKit members in containers, as cli/tests/docker_cluster.rs lays
# them out, to try by hand (issue 20):
#   e2e/docker/cluster.sh up     # build the image if needed, start n0 n1 n2
#   e2e/docker/cluster.sh down   # remove the containers, networks and volumes
# Members reach each other as n0:8080, n1:8080, n2:8080 on the internal
# network raftkit-e2e-raft; the host reaches them on 127.0.0.1:8100-8102
# through raftkit-e2e-front (the playground's addresses, so `raftkit status`
# works without --cluster). Cut one off with
#   docker network disconnect raftkit-e2e-raft raftkit-e2e-n1
# and back with
#   docker network connect --alias n1 raftkit-e2e-raft raftkit-e2e-n1
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix=raftkit-e2e
raft=$prefix-raft
front=$prefix-front
image=${RAFTKIT_IMAGE:-}

if ! docker info >/dev/null 2>&1; then
    echo "skipped: no Docker engine answers (docker info failed)"
    exit 0
fi

down() {
    for i in 0 1 2; do docker rm -f -v "$prefix-n$i" >/dev/null 2>&1 || true; done
    for n in "$raft" "$front"; do docker network rm "$n" >/dev/null 2>&1 || true; done
    for i in 0 1 2; do docker volume rm -f "$prefix-data$i" >/dev/null 2>&1 || true; done
}

up() {
    [ -n "$image" ] || image=$(e2e/build-image.sh | tail -1)
    case $image in skipped:*) echo "$image"; exit 0 ;; esac
    docker network create --internal "$raft" >/dev/null
    docker network create "$front" >/dev/null
    for i in 0 1 2; do
        docker volume create "$prefix-data$i" >/dev/null
        docker create --name "$prefix-n$i" --network "$front" -p "127.0.0.1:810$i:8080" \
            -v "$prefix-data$i:/var/lib/raftkit" "$image" \
            --advertise "n$i:8080" --initial-conf n0:8080,n1:8080,n2:8080 \
            --groups counter:counter,kv:kv >/dev/null
        docker network connect --alias "n$i" "$raft" "$prefix-n$i"
        docker start "$prefix-n$i" >/dev/null
    done
    echo "started $prefix-n0..2 ($image); export RAFTKIT_CLUSTER=127.0.0.1:8100,127.0.0.1:8101,127.0.0.1:8102"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

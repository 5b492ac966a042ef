#!/usr/bin/env bash
# End to end on a real Kubernetes cluster made with kind (issue 20):
#   1. a kind cluster of its own (raftkit-e2e-<pid>), deleted at the end, pass
#      or fail (KEEP_CLUSTER=1 keeps it for a look);
#   2. the image raftkit:<version> (e2e/build-image.sh, else `docker build .`)
#      loaded into it with `kind load`;
#   3. the chart charts/raftkit-operator installed in raftkit-system;
#   4. examples/raftcluster.yaml applied, then: Available; scale 3 -> 5 -> 3;
#      while a client Job writes (one `raftkit counter fetch-add 1` per pod),
#      a rolling restart (annotation raftkit.io/restartedAt) and the leader
#      pod deleted; then the counter must hold at least every acknowledged
#      increment (a Job pod that succeeded) and at most every attempted one;
#   5. examples/raftcluster-tls.yaml as "secure": a client with the
#      applications' Secret served, one without a certificate refused, then
#      the CA rotated (raftkit.io/caRotatedAt) and a new client served.
# Needs kind, kubectl, helm and a Docker engine that can pull images (kind's
# node image); where one is missing it prints "skipped: <why>" and exits 0.
#
# Environment: KIND_NODE_IMAGE (kind's node image; default: kind's own),
# E2E_WRITES (client increments, default 150), E2E_TIMEOUT (seconds per
# wait, default 600), KEEP_CLUSTER=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() {
    echo "skipped: $*"
    exit 0
}
say() { echo "kind-e2e: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

for tool in kind kubectl helm docker; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (needs kind, kubectl, helm and docker)"
done
docker info >/dev/null 2>&1 || skip "no Docker engine answers (docker info failed)"
# kind pulls its node image; without a registry nothing can be pulled.
if [[ -n ${KIND_NODE_IMAGE:-} ]] && docker image inspect "$KIND_NODE_IMAGE" >/dev/null 2>&1; then
    :
elif ! timeout 120 docker pull -q "${KIND_NODE_IMAGE:-busybox:1.37}" >/dev/null 2>&1; then
    skip "the Docker engine cannot pull images (docker pull ${KIND_NODE_IMAGE:-busybox:1.37} failed); kind needs its node image"
fi

cluster=raftkit-e2e-$$
ns=raftkit-e2e
timeout_s=${E2E_TIMEOUT:-600}
writes=${E2E_WRITES:-150}
export KUBECONFIG
KUBECONFIG=$(mktemp -t raftkit-kind-kubeconfig.XXXXXX)
created=0

diagnose() {
    say "state at failure:"
    kubectl get raftcluster,statefulset,pods,jobs -n "$ns" -o wide >&2 || true
    kubectl get raftcluster demo -n "$ns" -o yaml >&2 || true
    kubectl get events -n "$ns" --sort-by=.lastTimestamp >&2 || true
    kubectl logs -n raftkit-system -l app.kubernetes.io/name=raftkit-operator --tail=100 --prefix >&2 || true
}
teardown() {
    local rc=$?
    trap - EXIT
    [[ $rc -ne 0 && $created -eq 1 ]] && diagnose
    if [[ $created -eq 1 ]]; then
        if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
            say "keeping cluster $cluster (KUBECONFIG=$KUBECONFIG); kind delete cluster --name $cluster"
        else
            kind delete cluster --name "$cluster" >&2 || say "could not delete kind cluster $cluster"
            rm -f "$KUBECONFIG"
        fi
    else
        rm -f "$KUBECONFIG"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# wait_until DESCRIPTION COMMAND...: until COMMAND succeeds, or fail after timeout_s.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${timeout_s}s waiting for $what"
        sleep 2
    done
    say "$what"
}
status() { kubectl get raftcluster demo -n "$ns" -o "jsonpath={$1}"; }
# ready_at N: N members in the configuration, N ready, one revision, a leader.
ready_at() {
    [[ $(status .status.replicas) == "$1" && $(status .status.readyReplicas) == "$1" ]] &&
        [[ -n $(status .status.leader) ]] &&
        [[ $(status .status.currentRevision) == "$(status .status.updateRevision)" ]] &&
        [[ $(kubectl get statefulset demo -n "$ns" -o 'jsonpath={.status.replicas}') == "$1" ]]
}
leader_is_not() { [[ -n $(status .status.leader) && $(status .status.leader) != "$1" ]]; }
revision_changing() { [[ $(status .status.currentRevision) != "$(status .status.updateRevision)" ]]; }
job_succeeded_at_least() {
    local n
    n=$(kubectl get job writer -n "$ns" -o 'jsonpath={.status.succeeded}')
    ((${n:-0} >= $1))
}
pod_succeeded() { [[ $(kubectl get pod "$1" -n "$ns" -o 'jsonpath={.status.phase}') == Succeeded ]]; }

say "creating kind cluster $cluster"
created=1
kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} >&2

if [[ -x e2e/build-image.sh ]]; then
    image=$(e2e/build-image.sh | tail -n 1)
    [[ $image == skipped:* ]] && die "e2e/build-image.sh: $image"
else
    version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
    image=raftkit:$version
    docker build -t "$image" . >&2
fi
say "loading $image into the cluster"
kind load docker-image "$image" --name "$cluster" >&2

say "installing the chart"
helm install raftkit-operator charts/raftkit-operator -n raftkit-system --create-namespace \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --wait --timeout "${timeout_s}s" >&2
kubectl wait --for=condition=Available deployment/raftkit-operator -n raftkit-system \
    --timeout "${timeout_s}s" >&2

kubectl create namespace "$ns" >&2
# The writer and reader below run in $ns: the cluster's NetworkPolicy admits them.
sed -e "s|^  image: .*|  image: $image|" \
    -e "/^spec:/a\\  networkPolicy: { allowedNamespaces: [$ns] }" \
    examples/raftcluster.yaml | kubectl apply -n "$ns" -f - >&2
kubectl wait --for=condition=Available raftcluster/demo -n "$ns" --timeout "${timeout_s}s" >&2
wait_until "3 members ready" ready_at 3

kubectl scale raftcluster demo -n "$ns" --replicas 5 >&2
wait_until "scaled up: 5 members ready" ready_at 5
kubectl scale raftcluster demo -n "$ns" --replicas 3 >&2
wait_until "scaled down: 3 members ready" ready_at 3

# The client: one increment per pod, so Kubernetes counts the outcomes. A
# pod that succeeded is an acknowledged write; one that failed may or may
# not have been applied.
say "starting the client Job ($writes increments)"
kubectl apply -n "$ns" -f - >&2 <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: writer
spec:
  completions: $writes
  parallelism: 3
  backoffLimit: $writes
  template:
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: writer
          image: $image
          imagePullPolicy: IfNotPresent
          command: [raftkit, --cluster, "demo:8080", --timeout-ms, "10000", counter, fetch-add, "1"]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
EOF
wait_until "the client is writing" job_succeeded_at_least 5

kubectl annotate raftcluster demo -n "$ns" --overwrite raftkit.io/restartedAt="$(date -u +%FT%TZ)" >&2
wait_until "rolling restart begun" revision_changing
wait_until "rolling restart done: 3 members ready on the new revision" ready_at 3

leader=$(status .status.leader)
say "deleting the leader's pod $leader"
kubectl delete pod "$leader" -n "$ns" --wait=false >&2
wait_until "a new leader took over from $leader" leader_is_not "$leader"
wait_until "3 members ready after the leader's loss" ready_at 3

kubectl wait --for=condition=Complete job/writer -n "$ns" --timeout "${timeout_s}s" >&2
acked=$(kubectl get job writer -n "$ns" -o 'jsonpath={.status.succeeded}')
failed=$(kubectl get job writer -n "$ns" -o 'jsonpath={.status.failed}')
failed=${failed:-0}

kubectl run reader -n "$ns" --image="$image" --image-pull-policy=IfNotPresent --restart=Never \
    --command -- raftkit --cluster demo:8080 counter get >&2
wait_until "the reader finished" pod_succeeded reader
value=$(kubectl logs reader -n "$ns" | tail -n 1 | tr -dc '0-9')
[[ -n $value ]] || die "the reader printed no number"
say "counter $value; acknowledged $acked, attempted $((acked + failed))"
((value >= acked)) || die "acknowledged increments lost: counter $value < $acked acknowledged"
((value <= acked + failed)) || die "counter $value exceeds the $((acked + failed)) increments attempted"

# Mutual TLS (issue 21): a second cluster, "secure", from
# examples/raftcluster-tls.yaml. A pod with the applications' Secret
# mounted writes; a pod without a certificate is refused; after a CA
# rotation (raftkit.io/caRotatedAt: three steps, minutes apart) a new pod
# with the Secret as it is then writes again.
# run_client NAME SECRET|- ARGS...: a pod running `raftkit ARGS...`, with
# SECRET's files at /tls when one is named.
run_client() {
    local name=$1 secret=$2
    shift 2
    local args volumes=""
    args=$(printf '"%s",' "$@")
    if [[ $secret != - ]]; then
        volumes='"volumes": [{"name": "tls", "secret": {"secretName": "'"$secret"'"}}],'
        volumes+='"containers": [{"name": "'"$name"'", "image": "'"$image"'", "imagePullPolicy": "IfNotPresent",
          "command": ['"${args%,}"'], "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}]}]'
    else
        volumes='"containers": [{"name": "'"$name"'", "image": "'"$image"'", "imagePullPolicy": "IfNotPresent",
          "command": ['"${args%,}"']}]'
    fi
    kubectl run "$name" -n "$ns" --image="$image" --restart=Never \
        --overrides='{"apiVersion": "v1", "spec": {'"$volumes"'}}' >&2
}
pod_finished() {
    local phase
    phase=$(kubectl get pod "$1" -n "$ns" -o 'jsonpath={.status.phase}')
    [[ $phase == Succeeded || $phase == Failed ]]
}
tls_args=(raftkit --tls-cert /tls/tls.crt --tls-key /tls/tls.key --tls-ca /tls/ca.crt
    --cluster secure:8080 --timeout-ms 10000 counter fetch-add 1)
ca_rotated() {
    kubectl get events -n "$ns" --field-selector involvedObject.name=secure -o 'jsonpath={.items[*].message}' |
        grep -q "the old CA is no longer trusted"
}

say "a TLS cluster: secure"
sed -e "s|^  image: .*|  image: $image|" -e "s|^  name: demo|  name: secure|" \
    -e "/^spec:/a\\  networkPolicy: { allowedNamespaces: [$ns] }" \
    examples/raftcluster-tls.yaml | kubectl apply -n "$ns" -f - >&2
kubectl wait --for=condition=Available raftcluster/secure -n "$ns" --timeout "${timeout_s}s" >&2
run_client tls-writer secure-tls-client "${tls_args[@]}"
wait_until "the TLS client finished" pod_succeeded tls-writer
run_client plain-writer - raftkit --cluster secure:8080 --timeout-ms 5000 counter fetch-add 1
wait_until "the plain client finished" pod_finished plain-writer
[[ $(kubectl get pod plain-writer -n "$ns" -o 'jsonpath={.status.phase}') == Failed ]] ||
    die "a client without a certificate wrote to the TLS cluster"
kubectl annotate raftcluster secure -n "$ns" --overwrite raftkit.io/caRotatedAt="$(date -u +%FT%TZ)" >&2
wait_until "the CA rotated (three steps)" ca_rotated
run_client tls-writer-2 secure-tls-client "${tls_args[@]}"
wait_until "the TLS client finished after the CA rotation" pod_succeeded tls-writer-2

echo "kind e2e: passed (3 -> 5 -> 3, rolling restart and leader loss under writes; $acked acknowledged increments kept; TLS cluster: certified client served, plain one refused, CA rotated)"

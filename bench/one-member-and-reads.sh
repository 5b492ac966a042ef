#!/usr/bin/env bash
# Two measurements the engine fixes of issue 17 are judged by:
#  1. a one-member group (how the operator bootstraps every cluster): put
#     at one client against a single node whose --initial-conf is itself;
#  2. reads on a three-node group, linearizable (`get`) and confirmed by the
#     leader from any member (`get-follower`, clients spread over members),
#     whose tail showed ReadIndex contexts colliding between members.
# Prints one JSON row per point and writes them to
# target/bench/one-member-and-reads.json. Uses the binaries in RAFTKIT_BIN
# (default: target/release, built here), so two builds can be compared:
#
#   bench/one-member-and-reads.sh
#   RAFTKIT_BIN=/tmp/old BENCH_SECS=10 bench/one-member-and-reads.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${BENCH_SECS:-10}"
out_dir="$root/target/bench"
mkdir -p "$out_dir"
if [ -z "${RAFTKIT_BIN:-}" ]; then
  cargo build --release -q --bin raftkit --bin raftkit-node
  bin="$root/target/release"
else
  bin="$RAFTKIT_BIN"
fi
raftkit="$bin/raftkit"
# Builds before the split ran nodes as `raftkit node`; later ones ship raftkit-node.
if [ -x "$bin/raftkit-node" ]; then node=("$bin/raftkit-node"); else node=("$raftkit" node); fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() { # addr
  for _ in $(seq 1 200); do
    if curl -sf "http://$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "node $1 did not become ready" >&2
  return 1
}

rows="$out_dir/one-member-and-reads.json"
: >"$rows"
point() { # label cluster op clients
  echo "-- $1 $3 clients=$4" >&2
  "$raftkit" --cluster "$2" --output json bench --op "$3" --clients "$4" \
    --duration-s "$secs" --warmup-s 2 | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["point"] = sys.argv[1]
print(json.dumps(r))' "$1" | tee -a "$rows"
}

# 1. One member.
"${node[@]}" --listen 127.0.0.1:24700 --data-dir "$work/solo" --groups kv:kv \
  --initial-conf 127.0.0.1:24700 --sync true >"$work/solo.log" 2>&1 &
pids+=($!)
wait_ready 127.0.0.1:24700
point one-member 127.0.0.1:24700 put 1
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
pids=()

# 2. Three members, reads.
cluster="127.0.0.1:24710,127.0.0.1:24711,127.0.0.1:24712"
for i in 0 1 2; do
  "${node[@]}" --listen "127.0.0.1:2471$i" --data-dir "$work/rk$i" --groups kv:kv \
    --initial-conf "$cluster" --sync true >"$work/rk$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do wait_ready "127.0.0.1:2471$i"; done
"$raftkit" --cluster "$cluster" kv put key-0 value >/dev/null
point three-members "$cluster" get 16
point three-members "$cluster" get-follower 16

#!/usr/bin/env bash
# Runs the fault tests over and over (new random seeds each time) and stops
# at the first failure, keeping its output. Not part of CI: a soak is for
# catching what one run in a hundred does.
#
#   scripts/soak.sh            # 20 rounds
#   scripts/soak.sh 200        # 200 rounds
#   TESTS="multiprocess_kv" scripts/soak.sh 50
#
# Each round runs every test file named in TESTS (default: the KV
# linearizability test, the counter and snapshot fault tests, the
# in-process cluster tests). A failed round's output is in
# target/soak/round-N.log; the KV test prints its seed there, and
# RAFTKIT_TEST_SEED=<seed> replays the same operation mix.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
tests="${TESTS:-multiprocess_kv multiprocess_counter multiprocess_snapshots cluster_core}"
case "$rounds" in
  '' | *[!0-9]* | 0) echo "usage: scripts/soak.sh [ROUNDS]  (ROUNDS a positive number, got '$rounds')" >&2; exit 2 ;;
esac
args=()
for t in $tests; do
  if [ ! -f "node/tests/$t.rs" ]; then
    echo "no test file node/tests/$t.rs (TESTS names files in node/tests without .rs)" >&2
    exit 2
  fi
  args+=(--test "$t")
done
mkdir -p target/soak
echo "== building"
cargo test -p raftkit-node "${args[@]}" --no-run -q
for round in $(seq 1 "$rounds"); do
  log="target/soak/round-$round.log"
  start=$(date +%s)
  if cargo test -p raftkit-node "${args[@]}" -q -- --nocapture >"$log" 2>&1; then
    echo "round $round/$rounds ok ($(( $(date +%s) - start )) s)"
    rm -f "$log"
  else
    echo "round $round/$rounds FAILED ($(( $(date +%s) - start )) s); output in $log:"
    grep -E "panicked|seed|FAILED" "$log" | head -20
    exit 1
  fi
done
echo "all $rounds rounds passed"

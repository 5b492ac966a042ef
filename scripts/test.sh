#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, all tests.
# Tests that need tools this machine lacks (docker, kind, a cluster) skip
# themselves with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds once from a clean checkout: incremental caches would only take
# disk (CI's is small, and once ran out).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
# Free disk where target/ lives, printed between steps: if a build runs out
# of space again, the log shows which step took it.
disk() { echo "   (disk: $(df -h --output=avail "${CARGO_TARGET_DIR:-.}" 2>/dev/null | tail -1 | tr -d ' ') free)"; }
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
disk
echo "== cargo clippy --features stage-trace (the latency-analysis build)"
cargo clippy -p raftkit-node --features stage-trace --lib -- -D warnings
disk
echo "== cargo test"
cargo test --workspace
disk
echo "== packaging: Helm chart, deploy/, crds/, examples/ (scripts/check-packaging.sh)"
scripts/check-packaging.sh
disk
echo "== kind end to end (e2e/kind/run.sh; skips where kind, helm or image pulls are missing)"
e2e/kind/run.sh
disk

#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, all tests.
# Tests that need tools this machine lacks (docker, kind, a cluster) skip
# themselves with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy --features stage-trace (the latency-analysis build)"
cargo clippy -p raftkit-node --features stage-trace --lib -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== packaging: Helm chart, deploy/, crds/, examples/ (scripts/check-packaging.sh)"
scripts/check-packaging.sh
echo "== kind end to end (e2e/kind/run.sh; skips where kind, helm or image pulls are missing)"
e2e/kind/run.sh

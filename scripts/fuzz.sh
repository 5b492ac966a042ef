#!/usr/bin/env bash
# Fuzzes what a stranger's bytes reach before any authentication (issue
# 21): the raft stream's preface and frames (fuzz/fuzz_targets/raft_stream.rs)
# and the mux stream's frames and requests (mux_stream.rs), with cargo-fuzz
# (libFuzzer, AddressSanitizer), each for a fixed time. Not part of
# scripts/test.sh: a separate command, as testing.md keeps long runs.
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   FUZZ_SECS=600 scripts/fuzz.sh raft_stream
#
# Fails on a crash, a panic, a leak, an allocation over 16 MiB (inputs are
# at most 64 KiB, so more means a length taken from the input was trusted:
# with the frame reader made to reserve the claimed length, mux_stream
# failed within a second, malloc(16843004)) or an RSS over 1 GiB; the input that did it is kept in
# target/fuzz-artifacts/<target>/, the growing corpus in
# target/fuzz-corpus/<target>/. cargo-fuzz is installed from crates.io when
# missing; the stable compiler takes the sanitizer flags with
# RUSTC_BOOTSTRAP=1 (no other toolchain is needed).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECS:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# One target directory: the fuzz build's own corner of it (its flags differ).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(raft_stream mux_stream)
fi
for t in "${targets[@]}"; do
    corpus="target/fuzz-corpus/$t"
    artifacts="target/fuzz-artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    dict=()
    if [ -f "fuzz/$t.dict" ]; then
        dict=("-dict=fuzz/$t.dict")
    fi
    echo "fuzz: $t for ${secs}s" >&2
    cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$secs" -max_len=65536 \
        -malloc_limit_mb=16 -rss_limit_mb=1024 \
        -artifact_prefix="$artifacts" "${dict[@]}"
done
echo "fuzz: ${targets[*]}: no crash in ${secs}s each"

#!/usr/bin/env bash
# Runs every fuzz target for a while, one after the other, on one core (no -fork/-jobs).
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET]        default 20 (or $FUZZ_SECONDS)
#   FUZZ_TARGETS="control offer" fuzz/run-all.sh 600
#
# Needs a nightly toolchain (`cargo +nightly`) and cargo-fuzz (`cargo install cargo-fuzz`).
# New inputs go to fuzz/work/<target>/ (ignored by git); the committed corpus
# fuzz/corpus/<target>/ is only read. A crash, panic, timeout or out-of-memory stops the
# script with libFuzzer's exit status; the input is saved in fuzz/artifacts/<target>/
# (see fuzz/README.md for turning it into a regression test).
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-${FUZZ_SECONDS:-20}}"
read -r -a targets <<<"${FUZZ_TARGETS:-control chunk_request chunk_response manifest offer config}"

# Longest input per target: control frames may be 24 MiB, but 1 MiB lets the fuzzer
# reach every limit but the frame size (which decode_control checks first). A chunk
# request is at most 4 186 bytes; a chunk response's data is not parsed, so 64 KiB does.
max_len() {
    case "$1" in
    chunk_request) echo 8192 ;;
    chunk_response | config) echo 65536 ;;
    *) echo 1048576 ;;
    esac
}

# Release build with debug assertions and overflow checks, AddressSanitizer (the defaults).
cargo +nightly fuzz build

for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    echo "=== fuzz target $t: ${secs}s"
    cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$(max_len "$t")" -timeout=10 \
        -print_final_stats=1
done
echo "=== all fuzz targets ran ${secs}s each without a failure"

#!/usr/bin/env bash
# Coverage-guided fuzzing of one parser with cargo-fuzz (libFuzzer), seeded with the committed
# fixtures and earlier findings. Needs a nightly toolchain and `cargo install cargo-fuzz`.
#
#   fuzz/run.sh TARGET SECONDS      e.g. fuzz/run.sh pickle 600
#
# The run goes on after a finding (libFuzzer's fork mode), so SECONDS is the time fuzzed.
# Crashes, over-limit allocations and slow inputs land in fuzz/artifacts/TARGET/; copy each into
# fuzz/regressions/TARGET/ (the test suite replays them) once fixed. Targets: see crates/fuzz.
set -euo pipefail
target=${1:?target}; seconds=${2:-600}
cd "$(dirname "$0")/.."
corpus=fuzz/corpus/$target
mkdir -p "$corpus" "fuzz/artifacts/$target"
# Seeds in the form the target takes them, plus earlier findings (the dev build of the tests).
cargo run -q -p speechtune-fuzz --example seeds -- "$target" "$corpus"
cp fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
export SPEECHTUNE_FUZZ_TARGET=$target
# The allocation limit is enforced by the harness's allocator (crates/fuzz/src/alloc.rs);
# libFuzzer's own limits back it up. -max_len fits the largest seed.
# The instrumented nightly build (burn included: ~15 min the first time) has its own target folder.
cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "${FUZZ_TARGET_DIR:-fuzz/target}" --sanitizer none --release \
    parsers "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=6144 -max_len=200000 \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1

#!/usr/bin/env bash
# Where the time of one benchmark task goes, speechtune against PyTorch, in the same groups
# (matrix products and convolutions, GELU, softmax, normalisation, copies, ...): `perf record` of
# `speechtune bench --task TASK` and torch.profiler over the peer's timed runs (bench/profile_groups.py).
#
#   PYTHON=/path/to/python bash bench/profile.sh forward_1x10      # or lora_ctc_2x5, frozen_ws_2x5
#
# Needs Linux `perf` (Debian: linux-perf) and the peer's Python (see bench/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK="${1:-forward_1x10}"
REPEATS="${REPEATS:-5}"
PYTHON="${PYTHON:-.bench-venv/bin/python}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/speechtune-target}"
cargo build --quiet --release -p speechtune-cli
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# perf records the timed runs only: `speechtune bench` switches it on and off through two FIFOs.
mkfifo "$tmp/ctl" "$tmp/ack"
SPEECHTUNE_PERF_CTL="$tmp/ctl" SPEECHTUNE_PERF_ACK="$tmp/ack" perf record --quiet -F 499 --delay=-1 \
  --control "fifo:$tmp/ctl,$tmp/ack" -o "$tmp/perf.data" \
  "$CARGO_TARGET_DIR/release/speechtune" bench --task "$TASK" --repeats "$REPEATS" >"$tmp/st.json"
"$PYTHON" bench/peer_pytorch.py --task "$TASK" --repeats "$REPEATS" --profile "$tmp/torch.json" >"$tmp/pt.json"
median() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["median_s"])' "$1"; }
echo "task $TASK, $REPEATS timed runs per side (profiles cover those runs only)"
perf report --quiet -i "$tmp/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
  | python3 bench/profile_groups.py --torch "$tmp/torch.json" --seconds "$(median "$tmp/st.json")" "$(median "$tmp/pt.json")"

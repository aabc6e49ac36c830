#!/usr/bin/env bash
# speechtune against PyTorch + transformers + peft on the same work (issue 7), in one run:
# wav2vec2-base with random weights; forward 1 × 10 s and 4 × 10 s; one LoRA (r = 8, q, v) + CTC
# training step on 2 × 5 s; one frozen-upstream weighted-sum + CTC step on 2 × 5 s. Each task
# runs in its own process (peak RSS is its own), threads = cores, median of REPEATS timed runs
# after one warm-up. Prints a Markdown table with the ratios speechtune / PyTorch.
#
#   bash bench/run.sh                      # REPEATS=5; creates .bench-venv on first use
#   PYTHON=/path/to/python bash bench/run.sh   # a Python that already has the pinned peer
#   DEVICE=cuda bash bench/run.sh          # a `cuda` build against PyTorch on the same GPU
#
# The peer's packages (pinned in bench/peer_pytorch.py) are installed only here, never by the
# tests or CI: torch's default wheel is ~5.6 GB and takes minutes to install.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${REPEATS:-5}"
DEVICE="${DEVICE:-cpu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/speechtune-target}"

if [ -z "${PYTHON:-}" ]; then
  if [ ! -x .bench-venv/bin/python ]; then
    echo "creating .bench-venv with the peer's pinned packages (a few minutes) ..." >&2
    python3 -m venv .bench-venv
    .bench-venv/bin/pip install --quiet torch==2.5.1 transformers==4.46.3 peft==0.13.2
  fi
  PYTHON=.bench-venv/bin/python
fi

features=()
if [ "$DEVICE" != cpu ]; then features=(--features cuda); fi
cargo build --quiet --release -p speechtune-cli "${features[@]}"
ST="$CARGO_TARGET_DIR/release/speechtune"

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
echo "speechtune ..." >&2
"$ST" bench --repeats "$REPEATS" --device "$DEVICE" | sed 's/^/speechtune /' >>"$results"
echo "PyTorch ..." >&2
"$PYTHON" bench/peer_pytorch.py --repeats "$REPEATS" --device "$DEVICE" | sed 's/^/pytorch /' >>"$results"

"$PYTHON" - "$results" "$REPEATS" <<'EOF'
import json, platform, subprocess, sys
rows = {}
for line in open(sys.argv[1]):
    who, js = line.split(" ", 1)
    d = json.loads(js)
    rows.setdefault(d["task"], {})[who] = d
names = {
    "forward_1x10": "forward 1 × 10 s (every hidden state)",
    "forward_4x10": "forward 4 × 10 s",
    "lora_ctc_2x5": "LoRA r=8 (q, v) + CTC step, 2 × 5 s",
    "frozen_ws_2x5": "frozen + weighted sum + CTC step, 2 × 5 s",
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
any_row = next(iter(rows.values()))
st, pt = any_row["speechtune"], any_row["pytorch"]
print(f"machine: {cpu}, {st['threads']} threads; device {st['device']}")
print(f"speechtune {st['speechtune']} (burn {st['burn']}); torch {pt['torch']}, transformers {pt['transformers']}, peft {pt['peft']}; median of {sys.argv[2]} runs")
print()
print("| task | speechtune s | PyTorch s | time ratio | speechtune peak RSS | PyTorch peak RSS | memory ratio |")
print("|---|---|---|---|---|---|---|")
for task, r in rows.items():
    s, p = r["speechtune"], r["pytorch"]
    print(f"| {names.get(task, task)} | {s['median_s']:.2f} | {p['median_s']:.2f} | {s['median_s'] / p['median_s']:.2f}× "
          f"| {s['peak_rss_mb'] / 1024:.2f} GB | {p['peak_rss_mb'] / 1024:.2f} GB | {s['peak_rss_mb'] / p['peak_rss_mb']:.2f}× |")
EOF

#!/usr/bin/env bash
# speechtune against PyTorch + transformers + peft on the same work (issue 7), in one run:
# wav2vec2-base with random weights; forward 1 × 10 s and 4 × 10 s; one LoRA (r = 8, q, v) + CTC
# training step on 2 × 5 s; one frozen-upstream weighted-sum + CTC step on 2 × 5 s; one wav2vec 2.0
# pre-training step (Wav2Vec2ForPreTraining, 2 × 10 s, masks 0.65 × 10, 100 distractors); and
# whisper-base's encoder on one 30-s window (random weights on both sides). Each task
# runs in its own process (peak RSS is its own), threads = cores, REPEATS timed runs after one
# warm-up, twice per side in alternation (A B A B); the median of the pooled runs. Prints a
# Markdown table with the ratios speechtune / PyTorch (bench/table.py; ~15 minutes on 2 cores),
# and a second one with the throughput of the matrix products of a 1 × 10 s forward, alone.
# Above the tables, each side's build: speechtune's backend, burn features, the CPU instruction
# sets its kernels could use and the kernels; PyTorch's CPU capability, MKL and oneDNN.
# Mixed precision rows (BF16_TASKS, marked bf16): speechtune `--precision bf16` against the peer
# under `torch.autocast("cpu", dtype=torch.bfloat16)`.
#
#   bash bench/run.sh                      # REPEATS=3; creates .bench-venv on first use
#   PYTHON=/path/to/python bash bench/run.sh   # a Python that already has the pinned peer
#   DEVICE=cuda bash bench/run.sh          # a `cuda` build against PyTorch on the same GPU
#   (the `cuda` feature needs network access to build; for a `vulkan` build see bench/gpu.sh)
#   TASKS=pretrain_2x10 ONLY_SPEECHTUNE= BF16_TASKS= bash bench/run.sh   # some tasks only
#
# The peer's packages (pinned in bench/peer_pytorch.py) are installed only here, never by the
# tests or CI: torch's default wheel is ~5.6 GB and takes minutes to install.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${REPEATS:-3}"
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
# This machine's speed drifts (a shared VM: the same PyTorch run took 1.0 s and 1.7 s an hour
# apart), so the two sides alternate, task by task, twice.
for task in ${TASKS:-forward_1x10 forward_4x10 lora_ctc_2x5 lora_ctc_2x5_nodropout frozen_ws_2x5 gemm pretrain_2x10 whisper_encoder_1x30}; do
  for round in 1 2; do
    echo "$task, round $round ..." >&2
    "$ST" bench --task "$task" --repeats "$REPEATS" --device "$DEVICE" | sed 's/^/speechtune /' >>"$results"
    "$PYTHON" bench/peer_pytorch.py --task "$task" --repeats "$REPEATS" --device "$DEVICE" | sed 's/^/pytorch /' >>"$results"
  done
done
for task in ${BF16_TASKS-forward_1x10 forward_4x10 lora_ctc_2x5 lora_ctc_2x5_nodropout frozen_ws_2x5 whisper_encoder_1x30}; do
  for round in 1 2; do
    echo "$task in bf16, round $round ..." >&2
    "$ST" bench --task "$task" --repeats "$REPEATS" --device "$DEVICE" --precision bf16 | sed 's/^/speechtune /' >>"$results"
    "$PYTHON" bench/peer_pytorch.py --task "$task" --repeats "$REPEATS" --device "$DEVICE" --precision bf16 | sed 's/^/pytorch /' >>"$results"
  done
done
# What bf16 changes, on both sides (not a timing).
if [ -n "${BF16_TASKS-x}" ]; then
  echo "precision_cost ..." >&2
  "$ST" bench --task precision_cost --device "$DEVICE" | sed 's/^/speechtune /' >>"$results"
  "$PYTHON" bench/peer_pytorch.py --task precision_cost --device "$DEVICE" | sed 's/^/pytorch /' >>"$results"
fi
# speechtune-only rows: the hidden-state cache, and LoRA left unmerged.
for task in ${ONLY_SPEECHTUNE-lora_ctc_2x5_cached frozen_ws_2x5_cached forward_1x10_lora}; do
  echo "$task ..." >&2
  "$ST" bench --task "$task" --repeats "$REPEATS" --device "$DEVICE" | sed 's/^/speechtune /' >>"$results"
done
"$PYTHON" bench/table.py "$results"

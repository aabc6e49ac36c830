#!/usr/bin/env bash
# speechtune's `vulkan` build against PyTorch (CUDA) on the same NVIDIA GPU, in one run: first a
# correctness check (every hidden state of the wav2vec2-xlsr and whisper fixtures computed on the
# GPU against transformers' reference values), then the tasks of bench/run.sh alternating sides
# (A B A B), REPEATS timed runs after one warm-up each, and bench/table.py's table.
#
#   ST=path/to/speechtune PYTHON=python3 bash bench/gpu.sh OUT_DIR
#
# ST is a release build with `--features vulkan` (burn's `cuda` feature cannot be built here: it
# downloads LLVM while building); PYTHON has torch with CUDA, transformers and peft (the versions
# are printed in every row). The Vulkan loader must be installed (libvulkan1) and the driver's ICD
# visible (VK_DRIVER_FILES if it is not found).
set -uo pipefail
cd "$(dirname "$0")/.."
ST="${ST:?ST=path to a speechtune built with --features vulkan}"
PY="${PYTHON:-python3}"
OUT="${1:-.}"
REPEATS="${REPEATS:-5}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== correctness: hidden states on the GPU vs transformers"
for model in wav2vec2-xlsr whisper; do
  timeout 120 "$ST" features "tests/fixtures/$model" tests/fixtures/audio/mono16k.wav \
    --device vulkan --out "$OUT/features_$model.safetensors" || echo "features $model failed"
done
"$PY" - "$OUT" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
for model in ["wav2vec2-xlsr", "whisper"]:
    try:
        got = load_file(f"{out}/features_{model}.safetensors")
    except Exception as e:
        print(f"{model}: no output ({e})")
        continue
    want = load_file(f"tests/fixtures/{model}/reference.safetensors")
    worst = 0.0
    for k, v in got.items():
        ref = want.get(f"single.{k}")
        if ref is None or ref.shape != v.shape:
            print(f"{model} {k}: no reference of shape {v.shape}")
            continue
        worst = max(worst, float(np.abs(v - ref).max()))
    print(f"{model}: {len(got)} hidden states, max |GPU - transformers| = {worst:.2e}")
PY

echo "== speed"
results="$OUT/results.jsonl"
: >"$results"
for task in ${TASKS:-forward_1x10 lora_ctc_2x5 forward_4x10 frozen_ws_2x5 pretrain_2x10 whisper_encoder_1x30}; do
  for round in $(seq "${ROUNDS:-2}"); do
    timeout "${TASK_TIMEOUT:-150}" "$ST" bench --task "$task" --repeats "$REPEATS" --device vulkan | sed 's/^/speechtune /' >>"$results" \
      || echo "speechtune $task failed"
    timeout "${TASK_TIMEOUT:-150}" "$PY" bench/peer_pytorch.py --task "$task" --repeats "$REPEATS" --device cuda | sed 's/^/pytorch /' >>"$results" \
      || echo "pytorch $task failed"
  done
done
"$PY" bench/table.py "$results" | tee "$OUT/table.md"

#!/usr/bin/env bash
# Data-parallel scaling on this machine's CPUs: seconds per update of the same runs with one
# process (accumulating RANKS batches) and with RANKS processes under mpirun (one batch each), so
# every row trains on the same batches per update. Also RANKS processes with one thread each
# (burn's thread pool otherwise takes every core in every process).
#
#   cargo build --release -p speechtune-cli --features mpi
#   bash bench/scaling.sh            # ST=path/to/speechtune RANKS=2 STEPS=30
#
# Prints one JSON line per row: task, processes, threads, seconds per update, updates per second.
set -euo pipefail
cd "$(dirname "$0")/.."
ST="${ST:-${CARGO_TARGET_DIR:-target}/release/speechtune}"
RANKS="${RANKS:-2}"
STEPS="${STEPS:-30}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

row() { # task processes threads summary.json
  python3 - "$@" <<'EOF'
import json, sys
task, procs, threads, path = sys.argv[1:]
s = json.load(open(path))
spu = s["seconds_per_step"]
print(json.dumps({"task": task, "processes": int(procs), "threads_per_process": threads,
                  "seconds_per_update": round(spu, 3), "updates_per_second": round(1 / spu, 3)}))
EOF
}

tasks=(
  "pretrain_tiny|pretrain configs/pretrain_tiny.toml --set data.root=\"data/demo\" --set data.batch.max_seconds=20.0"
  "lora_asr_tiny_pretrained|train configs/asr_lora.toml --set upstream.model=\"builtin:tiny-pretrained\" --set data.root=\"data/demo\" --set data.batch.max_seconds=20.0"
)
for t in "${tasks[@]}"; do
  name="${t%%|*}"
  cmd="${t#*|}"
  common="--set train.steps=$STEPS --set train.eval_every=0 --set train.checkpoint_every=$STEPS"
  # shellcheck disable=SC2086
  eval "$ST" $cmd $common --set output_dir=\"$OUT/$name-1\" --set train.grad_accumulation=$RANKS >/dev/null 2>&1
  row "$name" 1 all "$OUT/$name-1/summary.json"
  # shellcheck disable=SC2086
  eval mpirun -n "$RANKS" --bind-to none "$ST" $cmd $common --set output_dir=\"$OUT/$name-n\" >/dev/null 2>&1
  row "$name" "$RANKS" all "$OUT/$name-n/summary.json"
  # shellcheck disable=SC2086
  eval mpirun -n "$RANKS" --bind-to none -x RAYON_NUM_THREADS=1 "$ST" $cmd $common --set output_dir=\"$OUT/$name-n1\" >/dev/null 2>&1
  row "$name" "$RANKS" 1 "$OUT/$name-n1/summary.json"
done

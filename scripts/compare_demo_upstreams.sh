#!/usr/bin/env bash
# README's comparison of the demo's two built-in upstreams (issue 14): the pre-trained one
# (builtin:tiny-pretrained, models/tiny-pretrained) and the random one (builtin:tiny), each
#   1. in the demo itself (joint ASR + LID, LoRA r = 8 on q/v, the same 7-minute budget), and
#   2. in a frozen linear LID probe (configs/demo_lid_probe.toml: the upstream does not train;
#      a softmax-weighted layer sum, mean-pooled, into one linear layer),
# both scored on the dev and test splits of the demo corpus from their best (dev) checkpoint.
# ~17 minutes on 2 cores. Runs go to runs/compare_*; prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/speechtune-target}"
cargo build --quiet --release -p speechtune-cli
ST="$CARGO_TARGET_DIR/release/speechtune"
# TABLE_ONLY=1: only print the table of the runs already there.
for up in $([ -n "${TABLE_ONLY:-}" ] || echo tiny-pretrained tiny); do
  "$ST" demo --out "runs/compare_demo_$up" --set "upstream.model=builtin:$up" >"runs/compare_demo_$up.log"
  rm -rf "runs/compare_probe_$up"
  "$ST" train configs/demo_lid_probe.toml --set "upstream.model=builtin:$up" \
    --set "output_dir=runs/compare_probe_$up" >"runs/compare_probe_$up.log"
  for run in "runs/compare_demo_$up" "runs/compare_probe_$up"; do
    for split in dev test; do "$ST" eval "$run" --split "$split" >/dev/null; done
  done
done
python3 - <<'PY'
import json
def ev(run, split):
    return json.load(open(f"runs/{run}/best/eval_{split}.json"))
print("| upstream | demo dev LID | demo dev CER | demo test LID | demo test CER | probe dev LID (macro-F1) | probe test LID (macro-F1) |")
print("|---|---|---|---|---|---|---|")
pct = lambda x: f"{100 * x:.1f}%"
for up, name in [("tiny-pretrained", "pre-trained (builtin:tiny-pretrained)"), ("tiny", "random (builtin:tiny)")]:
    d = {s: ev(f"compare_demo_{up}", s) for s in ("dev", "test")}
    p = {s: ev(f"compare_probe_{up}", s) for s in ("dev", "test")}
    print(f"| {name} | {pct(d['dev']['accuracy'])} | {pct(d['dev']['cer'])} | {pct(d['test']['accuracy'])} "
          f"| {pct(d['test']['cer'])} | {pct(p['dev']['accuracy'])} ({p['dev']['macro_f1']:.3f}) "
          f"| {pct(p['test']['accuracy'])} ({p['test']['macro_f1']:.3f}) |")
# What always answering the most frequent language scores (the splits are not balanced).
for split in ("dev", "test"):
    counts = [sum(row) for row in ev("compare_probe_tiny", split)["confusion"]]
    print(f"\n{split}: {sum(counts)} utterances; always the most frequent language: {pct(max(counts) / sum(counts))}", end="")
print()
PY

"""The Markdown table of bench/run.sh from its JSON lines ("speechtune {...}" / "pytorch {...}"):
runs of the same task and side are pooled (median of all timed runs, the larger peak RSS)."""

import json
import platform
import statistics
import sys

NAMES = {
    "forward_1x10": "forward 1 × 10 s (every hidden state)",
    "forward_4x10": "forward 4 × 10 s",
    "lora_ctc_2x5": "LoRA r=8 (q, v) + CTC step, 2 × 5 s (PyTorch: train-mode dropout)",
    "lora_ctc_2x5_nodropout": "the same step, PyTorch's dropout off (the same work)",
    "lora_ctc_2x5_cached": "the LoRA step in later epochs (frozen CNN's features cached)",
    "frozen_ws_2x5": "frozen + weighted sum + CTC step, 2 × 5 s",
    "frozen_ws_2x5_cached": "the same step on cached hidden states (later epochs)",
    "forward_1x10_lora": "forward 1 × 10 s, LoRA attached, not merged",
    "pretrain_2x10": "wav2vec 2.0 pre-training step, 2 × 10 s (masks 0.65 × 10, 100 distractors)",
    "whisper_encoder_1x30": "whisper-base encoder, one 30-s window (every hidden state)",
}


def name_of(key: str) -> str:
    """A row's name; `task:bf16` rows ran with `--precision bf16` (PyTorch: torch.autocast)."""
    task, _, precision = key.partition(":")
    name = NAMES.get(task, task)
    return f"**bf16** {name}" if precision else name


def main(path: str) -> None:
    rows: dict = {}
    cost: dict = {}
    for line in open(path):
        who, js = line.split(" ", 1)
        d = json.loads(js)
        if d["task"] == "precision_cost":
            cost[who] = d
            continue
        key = d["task"] + (":bf16" if d.get("precision") == "bf16" else "")
        r = rows.setdefault(key, {})
        if who in r:
            r[who]["runs_s"] += d["runs_s"]
            r[who]["shapes_runs"].append(d.get("shapes"))
            r[who]["peak_rss_mb"] = max(r[who]["peak_rss_mb"], d["peak_rss_mb"])
        else:
            r[who] = d
            d["shapes_runs"] = [d.get("shapes")]
    for r in rows.values():
        for d in r.values():
            d["median_s"] = statistics.median(d["runs_s"])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    first = next(r for r in rows.values() if "pytorch" in r)
    st, pt = first["speechtune"], first["pytorch"]
    print(f"machine: {cpu}, {st['threads']} threads; device {st['device']}")
    print(
        f"speechtune {st['speechtune']} (burn {st['burn']}); torch {pt['torch']}, transformers {pt['transformers']}, "
        f"peft {pt['peft']}; median of {len(st['runs_s'])} timed runs per side"
    )
    # Each side's build and kernels (results from before these fields existed have none).
    if "build" in st:
        b = st["build"]
        extra = f", program features {', '.join(b['program_features'])}" if b["program_features"] else ""
        print(
            f"speechtune build: backend {b['backend']}, burn features {b['burn_features']}{extra}; "
            f"CPU instruction sets {', '.join(b['cpu_isa']) or 'baseline'}; kernels: {b['kernels']}"
            + (f"; bf16 products: {b['bf16_kernel']}" if "bf16_kernel" in b else "")
            + (f" ({b['bf16_ops']})" if "bf16_ops" in b else "")
        )
    if "build" in pt:
        b = pt["build"]
        print(
            f"PyTorch build: CPU capability {b['cpu_capability']}, MKL {b['mkl']}, oneDNN {b['onednn']}"
            + (f", CUDA {b['cuda']}" if b.get("cuda") else "")
        )
    print()
    print("| task | speechtune s | PyTorch s | time ratio | speechtune peak RSS | PyTorch peak RSS | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for task, r in rows.items():
        if task == "gemm":
            continue
        s, p = r["speechtune"], r.get("pytorch")
        name = name_of(task)
        if p is None:
            print(f"| {name} | {s['median_s']:.3f} | — | — | {s['peak_rss_mb'] / 1024:.2f} GB | — | — |")
            continue
        print(
            f"| {name} | {s['median_s']:.2f} | {p['median_s']:.2f} | {s['median_s'] / p['median_s']:.2f}× "
            f"| {s['peak_rss_mb'] / 1024:.2f} GB | {p['peak_rss_mb'] / 1024:.2f} GB | {s['peak_rss_mb'] / p['peak_rss_mb']:.2f}× |"
        )

    if "gemm" in rows and len(rows["gemm"]) == 2:
        gemm_table(rows["gemm"])
    if cost:
        cost_table(cost)


def cost_table(cost: dict) -> None:
    """What bf16 changes (`precision_cost`): hidden states of a 1 × 10 s forward and five LoRA steps' losses."""
    print()
    print("| bf16 against f32 | hidden states: max difference / largest value (layer with the most) | "
          "last hidden state | LoRA + CTC losses, 5 steps: max difference (relative) |")
    print("|---|---|---|---|")
    for who in ("speechtune", "pytorch"):
        if who not in cost:
            continue
        d = cost[who]
        h = d["hidden_state_max_rel_diff"]
        worst = max(range(len(h)), key=lambda i: h[i])
        diffs = [abs(a - b) for a, b in zip(d["losses_f32"], d["losses_bf16"])]
        i = max(range(len(diffs)), key=lambda i: diffs[i])
        label = "speechtune `--precision bf16`" if who == "speechtune" else "PyTorch `torch.autocast(bfloat16)`"
        print(f"| {label} | {h[worst]:.2%} (hidden_states.{worst}) | {h[-1]:.2%} | "
              f"{diffs[i]:.3f} at step {i} ({diffs[i] / abs(d['losses_f32'][i]):.2%}) |")


def gemm_table(r: dict) -> None:
    """Throughput of the matrix products of one 1 × 10 s forward, each side's median per shape."""
    per_side = {}
    for who, d in r.items():
        names = [x["name"] for x in d["shapes_runs"][0]]
        per_side[who] = {
            n: statistics.median(next(x for x in run if x["name"] == n)["median_s"] for run in d["shapes_runs"])
            for n in names
        }
    print()
    print("| matrix product (1 × 10 s forward) | per forward | shape b × (m × k) · (k × n) | speechtune GFLOP/s | PyTorch GFLOP/s | time ratio |")
    print("|---|---|---|---|---|---|")
    totals = {"speechtune": 0.0, "pytorch": 0.0}
    for x in r["speechtune"]["shapes_runs"][0]:
        n, flop = x["name"], 2.0 * x["batch"] * x["m"] * x["k"] * x["n"]
        st, pt = per_side["speechtune"][n], per_side["pytorch"][n]
        for who, t in (("speechtune", st), ("pytorch", pt)):
            totals[who] += t * x["per_forward"]
        print(
            f"| {n} | {x['per_forward']} | {x['batch']} × ({x['m']} × {x['k']}) · ({x['k']} × {x['n']}) "
            f"| {flop / st / 1e9:.0f} | {flop / pt / 1e9:.0f} | {st / pt:.2f}× |"
        )
    st, pt = totals["speechtune"], totals["pytorch"]
    print(f"| all of them, one forward | | | {st:.3f} s | {pt:.3f} s | {st / pt:.2f}× |")


if __name__ == "__main__":
    main(sys.argv[1])

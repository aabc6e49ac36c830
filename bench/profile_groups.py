"""Where the time of one benchmark task goes, grouped the same way for both sides (bench/profile.sh).

speechtune: `perf report --stdio` lines on stdin ("  21.18%  dso  [.] symbol"), each symbol put in a
group by its name. PyTorch: `--torch FILE`, the JSON that `peer_pytorch.py --profile` writes
(self CPU time per aten operation). Each side's shares times its median time per run give seconds.
Groups: matrix products and convolutions, GELU/erf, softmax/exp,
normalisation, copies and fills, random numbers, the kernel's share, the rest."""

import argparse
import json
import re
import sys

# (group, pattern on a speechtune symbol, pattern on a PyTorch operation), first match wins.
GROUPS = [
    ("fused attention (PyTorch's SDPA kernel: its products and softmax)", r"$^", r"scaled_dot_product|attention"),
    ("matrix products and convolutions", r"gemm|matmul", r"addmm|::mm$|bmm|conv|mkldnn|linear|matmul|baddbmm"),
    ("GELU / erf", r"erf|gelu", r"gelu"),
    ("softmax / exp", r"exp|softmax", r"softmax|exp"),
    ("normalisation", r"norm|mean|var", r"norm"),
    ("copies and fills", r"memmove|memcpy|memset|copy|clone|contiguous|cat|slice", r"copy|clone|contiguous|cat|fill|zero|stack|index|slice|empty"),
    ("random numbers (weights at start, dropout)", r"random|sampler|chacha|rng", r"rand|bernoulli|dropout"),
    ("kernel: page faults, scheduling", r"^\[k\]", r"$^"),
]


def group(name: str, side: int) -> str:
    for g, *pats in GROUPS:
        if re.search(pats[side], name, re.IGNORECASE):
            return g
    return "the rest"


def speechtune(lines) -> dict:
    out: dict = {}
    for line in lines:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\[[.k]\])\s+(.*)", line)
        if not m:
            continue
        pct, kind, sym = float(m.group(1)), m.group(3), m.group(4)
        g = group("[k]" if kind == "[k]" else sym, 0)
        out[g] = out.get(g, 0.0) + pct
    return out


def torch_groups(path: str) -> dict:
    ops = json.load(open(path))
    total = sum(ops.values())
    out: dict = {}
    for name, us in ops.items():
        g = group(name, 1)
        out[g] = out.get(g, 0.0) + 100.0 * us / total
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch", required=True, help="the JSON of peer_pytorch.py --profile")
    ap.add_argument("--seconds", nargs=2, type=float, required=True, metavar=("SPEECHTUNE", "PYTORCH"),
                    help="each side's median time per run: the shares become seconds")
    a = ap.parse_args()
    st, pt = speechtune(sys.stdin), torch_groups(a.torch)
    s_st, s_pt = a.seconds
    print("| where the time of one run goes | speechtune s (share of perf samples) | PyTorch s (share of self CPU time) |")
    print("|---|---|---|")
    for g in [g for g, *_ in GROUPS] + ["the rest"]:
        x, y = st.get(g, 0.0), pt.get(g, 0.0)
        print(f"| {g} | {s_st * x / 100:.3f} ({x:.1f} %) | {s_pt * y / 100:.3f} ({y:.1f} %) |")
    print(f"| all | {s_st:.3f} | {s_pt:.3f} |")


if __name__ == "__main__":
    main()

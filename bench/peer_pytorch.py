"""The PyTorch peer of speechtune's benchmark (issue 7): the same work on wav2vec2-base with
random weights, each task in its own process, medians over several runs, threads = cores.

Pinned (install only to benchmark, never for tests or CI):
    python -m venv .bench-venv && .bench-venv/bin/pip install torch==2.5.1 transformers==4.46.3 peft==0.13.2
    .bench-venv/bin/python bench/peer_pytorch.py            # every task, JSON lines on stdout
    .bench-venv/bin/python bench/peer_pytorch.py --task forward_1x10
    .bench-venv/bin/python bench/peer_pytorch.py --device cuda       # on a GPU

Tasks:
  forward_1x10   inference, 1 × 10 s, every hidden state
  forward_4x10   inference, 4 × 10 s
  lora_ctc_2x5   one training step: LoRA r = 8 on q, v (peft) + linear CTC head, 2 × 5 s, AdamW
                 (train mode: transformers' default dropout in the upstream, as a user gets it)
  lora_ctc_2x5_nodropout  the same step with the upstream's dropout off (speechtune's upstream
                 has none, so this is the same work on both sides)
  frozen_ws_2x5  one training step: frozen upstream, softmax-weighted layer sum + linear CTC head
  gemm           matrix products alone, in the shapes of a 1 × 10 s forward (bench/gemm_shapes.json)
  pretrain_2x10  one Wav2Vec2ForPreTraining step, 2 × 10 s: masks 0.65 × 10 and 100 distractors drawn
                 each step, Gumbel quantizer, contrastive + diversity loss, AdamW, dropout off
Each result: {"task", "median_s", "runs_s", "peak_rss_mb", "torch", "transformers", "peft", "threads"}.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TASKS = ["forward_1x10", "forward_4x10", "lora_ctc_2x5", "lora_ctc_2x5_nodropout", "frozen_ws_2x5", "gemm",
         "pretrain_2x10", "whisper_encoder_1x30", "precision_cost"]
VOCAB = 32
# [name, times per forward, batch, m, k, n]: the matrix products of one wav2vec2-base forward over
# 1 × 10 s, convolutions as the products they amount to; speechtune's bench reads the same file.
GEMM_SHAPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemm_shapes.json")


def gemm(repeats: int, warmup: int, device: str, sync) -> tuple:
    import torch

    shapes, total = [], 0.0
    for name, count, batch, m, k, n in json.load(open(GEMM_SHAPES)):
        a = torch.randn(batch, m, k, device=device)
        b = torch.randn(batch, k, n, device=device)
        times = []
        for i in range(warmup + repeats):
            sync()
            t = time.perf_counter()
            torch.matmul(a, b)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        shapes.append({"name": name, "per_forward": count, "batch": batch, "m": m, "k": k, "n": n,
                       "median_s": s, "gflops": 2.0 * batch * m * k * n / s / 1e9})
        total += s * count
    return shapes, total


def precision_cost(device: str) -> dict:
    """Not a timing: what torch.autocast(bfloat16) changes. Every hidden state of a 1 × 10 s
    forward against f32 (max difference over the state's largest value), and the losses of five
    LoRA + CTC steps (lora_ctc_2x5's, dropout off) from the same start with and without it."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    dev_type = "cuda" if device != "cpu" else "cpu"
    torch.manual_seed(0)
    off = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = Wav2Vec2Model(Wav2Vec2Config(**off)).to(device).eval()
    x = torch.randn(1, 160000).to(device)
    states = []
    for enabled in (False, True):
        with torch.inference_mode(), torch.autocast(dev_type, dtype=torch.bfloat16, enabled=enabled):
            states.append([h.float() for h in model(x, output_hidden_states=True).hidden_states])
    hidden = [((b - a).abs().max() / a.abs().max()).item() for a, b in zip(*states)]
    x = torch.randn(2, 80000).to(device)
    frames = model._get_feat_extract_output_lengths(torch.tensor(x.shape[1])).item()
    targets = torch.randint(1, VOCAB, (2, 40)).to(device)
    start = copy.deepcopy(model).train()
    start.config.mask_time_prob = 0.0
    start.freeze_feature_encoder()
    head0 = torch.nn.Linear(768, VOCAB).to(device)
    lora_seed = torch.randint(0, 2**31, (1,)).item()
    losses = {}
    for name, enabled in (("f32", False), ("bf16", True)):
        torch.manual_seed(lora_seed)
        upstream = get_peft_model(copy.deepcopy(start), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        head = copy.deepcopy(head0)
        params = [p for p in upstream.parameters() if p.requires_grad] + list(head.parameters())
        optim = torch.optim.AdamW(params, lr=1e-4)

        def loss_now():
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=enabled):
                logits = head(upstream(x).last_hidden_state).log_softmax(-1).transpose(0, 1)
                return torch.nn.functional.ctc_loss(logits, targets, torch.tensor([frames] * 2), torch.tensor([40, 40]),
                                                    zero_infinity=True)

        run = []
        for _ in range(5):
            loss = loss_now()
            run.append(loss.item())
            optim.zero_grad()
            loss.backward()
            optim.step()
        with torch.no_grad():
            run.append(loss_now().item())
        losses[name] = run
    return {"task": "precision_cost", "hidden_state_max_rel_diff": hidden, "losses_f32": losses["f32"],
            "losses_bf16": losses["bf16"], "device": device}


def run_task(task: str, repeats: int, warmup: int, device: str, profile: str = "", precision: str = "f32") -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    def amp():
        """`--precision bf16`: the forward pass and loss under autocast, as users run it."""
        return torch.autocast("cuda" if device != "cpu" else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    if task == "precision_cost":
        return precision_cost(device)
    if task == "gemm":
        shapes, total = gemm(repeats, warmup, device, sync)
        return {"task": task, "median_s": total, "runs_s": [total], "shapes": shapes, **about(threads, device)}
    def audio(batch: int, seconds: float):
        return torch.randn(batch, int(seconds * 16000)).to(device)

    if task == "whisper_encoder_1x30":
        # whisper-base's encoder, random weights, one 30-s window of (random) log-mel features.
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                               num_mel_bins=80)
        encoder = WhisperEncoder(config).to(device).eval()
        features = torch.randn(1, 80, 3000).to(device)

        def step():
            with torch.inference_mode(), amp():
                encoder(features, output_hidden_states=True)

        return {**timed_runs(task, step, repeats, warmup, sync, profile, threads, device), "precision": precision}

    if task == "pretrain_2x10":
        from transformers import Wav2Vec2ForPreTraining
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        # wav2vec2-base's shape; speechtune's pre-training has no dropout, so none here either.
        off = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                   feat_quantizer_dropout=0.0, layerdrop=0.0)
        model = Wav2Vec2ForPreTraining(Wav2Vec2Config(mask_time_prob=0.65, **off)).to(device).train()
        x = audio(2, 10.0)
        frames = model._get_feat_extract_output_lengths(torch.tensor(x.shape[1])).item()
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            mask = _compute_mask_indices((2, frames), 0.65, 10, min_masks=2)
            negatives = _sample_negative_indices((2, frames), 100, mask_time_indices=mask)
            out = model(x, mask_time_indices=torch.tensor(mask, device=device),
                        sampled_negative_indices=torch.tensor(negatives, device=device))
            optim.zero_grad()
            out.loss.backward()
            optim.step()

        return timed_runs(task, step, repeats, warmup, sync, profile, threads, device)
    # wav2vec2-base shape, random weights
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = Wav2Vec2Model(Wav2Vec2Config(**(no_dropout if task.endswith("_nodropout") else {}))).to(device)
    model.config.mask_time_prob = 0.0

    if task.startswith("forward"):
        batch = 1 if task == "forward_1x10" else 4
        x = audio(batch, 10.0)
        model.eval()

        def step():
            with torch.inference_mode(), amp():
                model(x, output_hidden_states=True)

    else:
        x = audio(2, 5.0)
        model.train()
        model.config.layerdrop = 0.0
        frames = model._get_feat_extract_output_lengths(torch.tensor(x.shape[1])).item()
        targets = torch.randint(1, VOCAB, (2, 40)).to(device)
        target_lengths = torch.tensor([40, 40])
        input_lengths = torch.tensor([frames, frames])
        if task.startswith("lora_ctc_2x5"):
            from peft import LoraConfig, get_peft_model

            model.freeze_feature_encoder()
            upstream = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
            head = torch.nn.Linear(768, VOCAB).to(device)

            def features():
                return upstream(x).last_hidden_state

            params = [p for p in upstream.parameters() if p.requires_grad] + list(head.parameters())
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            weights = torch.nn.Parameter(torch.zeros(model.config.num_hidden_layers + 1, device=device))
            head = torch.nn.Linear(768, VOCAB).to(device)

            def features():
                with torch.no_grad():
                    hs = torch.stack(model(x, output_hidden_states=True).hidden_states)
                return (torch.softmax(weights, 0)[:, None, None, None] * hs).sum(0)

            params = [weights] + list(head.parameters())
        optim = torch.optim.AdamW(params, lr=1e-4)

        def step():
            with amp():
                logits = head(features()).log_softmax(-1).transpose(0, 1)
                loss = torch.nn.functional.ctc_loss(logits, targets, input_lengths, target_lengths, zero_infinity=True)
            optim.zero_grad()
            loss.backward()
            optim.step()

    return {**timed_runs(task, step, repeats, warmup, sync, profile, threads, device), "precision": precision}


def timed_runs(task, step, repeats: int, warmup: int, sync, profile: str, threads: int, device: str) -> dict:
    """Warm-up runs, then `repeats` timed ones (optionally under the profiler)."""
    for _ in range(warmup):
        step()
    runs = []

    def timed():
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            step()
            sync()
            runs.append(time.perf_counter() - t)

    if profile:
        # Self CPU time per operation over the timed runs (bench/profile.sh groups them).
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            timed()
        ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        with open(profile, "w") as f:
            json.dump(ops, f)
    else:
        timed()
    return {"task": task, "median_s": statistics.median(runs), "runs_s": runs, **about(threads, device)}


def about(threads: int, device: str) -> dict:
    """Peak memory, versions and the machine's settings, for every result."""
    import peft
    import torch
    import transformers

    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": threads,
        "device": device,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else None,
        # What the numbers were computed with: the kernels' instruction set and libraries.
        "build": {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available(),
            "onednn": torch.backends.mkldnn.is_available(),
            "cuda": torch.version.cuda if device != "cpu" else None,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=TASKS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--profile", default="", help="with --task: write self CPU time per operation (JSON) here")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="bf16: forward and loss under torch.autocast(dtype=torch.bfloat16) (forward and LoRA/frozen step tasks)")
    a = ap.parse_args()
    if a.task:
        print(json.dumps(run_task(a.task, a.repeats, a.warmup, a.device, a.profile, a.precision)), flush=True)
        return
    # Each task in its own process, so that peak memory is its own.
    for t in TASKS:
        args = ["--task", t, "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--device", a.device,
                "--precision", a.precision]
        subprocess.run([sys.executable, __file__, *args], check=True)


if __name__ == "__main__":
    main()

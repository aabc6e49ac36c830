#!/usr/bin/env python3
"""Build the wav2vec 2.0 pre-training parity fixtures under tests/fixtures/pretrain-*/ (run by
hand, never by tests or CI), in the pinned environment of make_fixtures.py:

    ~/fixenv/bin/python scripts/make_pretrain_fixtures.py

For both layouts (base: group-norm CNN, post-LN; large/XLS-R: layer-norm CNN, pre-LN) this
saves a tiny `Wav2Vec2ForPreTraining` (config.json + model.safetensors, quantizer included) and
`reference.safetensors` with what transformers computes in eval mode (argmax quantizer) for a
batch of two utterances, given `mask_time_indices` from `_compute_mask_indices` and
`sampled_negative_indices` from `_sample_negative_indices`: the total, contrastive and
diversity losses, the codevector perplexity, fairseq's feature penalty (mean square of the CNN
output) and the gradient of the total loss for every parameter (`grad.NAME`; absent where
transformers computes none).
"""

import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file as save_np

assert torch.__version__.startswith("2.5.1"), torch.__version__
assert transformers.__version__ == "4.46.3", transformers.__version__

from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining  # noqa: E402
from transformers.models.wav2vec2.modeling_wav2vec2 import (  # noqa: E402
    _compute_mask_indices,
    _sample_negative_indices,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT, TINY, audio, np32, randomize  # noqa: E402

QUANTIZER = dict(
    num_codevector_groups=2,
    num_codevectors_per_group=8,
    codevector_dim=16,
    proj_codevector_dim=12,
    num_negatives=10,
    contrastive_logits_temperature=0.1,
    diversity_loss_weight=0.1,
    feat_quantizer_dropout=0.0,
    mask_time_prob=0.5,
    mask_time_length=4,
    mask_time_min_masks=2,
)


def fixture(name, layout, seed):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    cfg = Wav2Vec2Config(**dict(TINY, **QUANTIZER), **layout)
    model = randomize(Wav2Vec2ForPreTraining(cfg), seed)
    model.save_pretrained(out, safe_serialization=True)
    model = Wav2Vec2ForPreTraining.from_pretrained(out).eval()

    n = 3200
    x = np.stack([audio(n, 1), audio(n, 2)]).astype(np.float32) / 32768.0
    if layout["do_stable_layer_norm"]:
        x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-7)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(n)).item())
    np.random.seed(seed)
    mask = _compute_mask_indices((2, frames), cfg.mask_time_prob, cfg.mask_time_length, min_masks=2)
    neg = _sample_negative_indices((2, frames), cfg.num_negatives, mask)
    inputs = torch.from_numpy(x)
    out_t = model(
        inputs,
        mask_time_indices=torch.from_numpy(mask),
        sampled_negative_indices=torch.from_numpy(neg).long(),
    )
    out_t.loss.backward()
    with torch.no_grad():
        pen = model.wav2vec2.feature_extractor(inputs).float().pow(2).mean()
    ref = {
        "input_values": x,
        "mask_time_indices": mask.astype(np.float32),
        "sampled_negative_indices": neg.astype(np.int64),
        "loss": np32(out_t.loss).reshape(1),
        "contrastive_loss": np32(out_t.contrastive_loss).reshape(1),
        "diversity_loss": np32(out_t.diversity_loss).reshape(1),
        "codevector_perplexity": np32(out_t.codevector_perplexity).reshape(1),
        "feature_pen": np32(pen).reshape(1),
    }
    for pname, p in model.named_parameters():
        if p.grad is not None:
            ref[f"grad.{pname}"] = np32(p.grad)
    save_np(ref, os.path.join(out, "reference.safetensors"))
    masked = int(mask.sum())
    print(f"{name}: {frames} frames x 2, {masked} masked, loss {out_t.loss.item():.4f}")


def main():
    torch.manual_seed(0)
    fixture("pretrain-base", dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False), 11)
    fixture("pretrain-xlsr", dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True), 12)


if __name__ == "__main__":
    sys.exit(main())

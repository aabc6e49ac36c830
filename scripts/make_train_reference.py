#!/usr/bin/env python3
"""Reference for the 5-step LoRA + CTC training parity test (run by hand, never by tests or CI).

Pinned environment: the one of make_fixtures.py plus peft:

    ~/fixenv/bin/pip install peft==0.13.2
    ~/fixenv/bin/python scripts/make_train_reference.py

On the tiny wav2vec2-base fixture (tests/fixtures/wav2vec2-base) and its padded batch of two
utterances, peft attaches LoRA (r=4, alpha=8, q_proj and v_proj); a linear CTC head reads the last
hidden state. Five AdamW steps (lr 5e-3, weight decay 0.01, eps 1e-8) on torch's CTC loss
(reduction "mean": each utterance's loss divided by its target length, then averaged). Written to
tests/fixtures/train-lora-ctc/reference.safetensors: the initial LoRA weights in peft's names, the
head, the targets, and the loss before each step and after the last.
"""

import os

import numpy as np
import peft
import torch
import transformers
from safetensors.numpy import load_file, save_file

assert torch.__version__.startswith("2.5.1"), torch.__version__
assert transformers.__version__ == "4.46.3", transformers.__version__
assert peft.__version__ == "0.13.2", peft.__version__

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
VOCAB = 10
TARGETS = [[3, 5, 5, 2, 7, 1], [4, 6, 8, 9]]
STEPS = 5


def main():
    torch.manual_seed(0)
    src = os.path.join(ROOT, "wav2vec2-base")
    ref = load_file(os.path.join(src, "reference.safetensors"))
    model = transformers.Wav2Vec2Model.from_pretrained(src)
    # eval(): no dropout, LayerDrop or SpecAugment; gradients still flow.
    model.eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, cfg)
    # peft starts lora_B at zero; draw it too, so that the first step already moves lora_A.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    init = {k: v.detach().numpy().copy() for k, v in peft.get_peft_model_state_dict(model).items()}
    head = torch.nn.Linear(model.config.hidden_size, VOCAB)
    head_init = {k: v.detach().numpy().copy() for k, v in head.state_dict().items()}

    inputs = torch.from_numpy(ref["batch.input_values"])
    mask = torch.from_numpy(ref["batch.attention_mask"]).long()
    frames = model.base_model.model._get_feat_extract_output_lengths(mask.sum(-1))
    targets = torch.tensor([t for seq in TARGETS for t in seq])
    target_lengths = torch.tensor([len(t) for t in TARGETS])
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def loss_fn():
        hidden = model(inputs, attention_mask=mask).last_hidden_state
        lp = torch.log_softmax(head(hidden), -1).transpose(0, 1)
        return torch.nn.functional.ctc_loss(lp, targets, frames, target_lengths, blank=0, reduction="mean")

    losses = []
    for _ in range(STEPS):
        optim.zero_grad()
        loss = loss_fn()
        losses.append(loss.item())
        loss.backward()
        optim.step()
    with torch.no_grad():
        losses.append(loss_fn().item())
    print("losses", losses)

    out = {f"lora.{k}": v for k, v in init.items()}
    out["head.weight"] = head_init["weight"]  # [vocab, hidden]
    out["head.bias"] = head_init["bias"]
    out["targets"] = targets.numpy().astype(np.int64)
    out["target_lengths"] = target_lengths.numpy().astype(np.int64)
    out["frames"] = frames.numpy().astype(np.int64)
    out["losses"] = np.array(losses, dtype=np.float64)
    dst = os.path.join(ROOT, "train-lora-ctc")
    os.makedirs(dst, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, os.path.join(dst, "reference.safetensors"))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference for the 5-step LoRA seq2seq (Whisper) training parity test (run by hand, never by
tests or CI). Pinned environment: the one of make_fixtures.py plus peft 0.13.2:

    ~/fixenv/bin/python scripts/make_seq2seq_reference.py

On the tiny Whisper fixture (tests/fixtures/whisper-seq2seq, with its tiny tokenizer) and its two
log-mel inputs, peft attaches LoRA (r=4, alpha=8, q_proj and v_proj: the encoder's self-attention
and both attentions of every decoder layer, as in the usual Whisper recipe). The labels are the
tokenizer's ids for two transcripts of different lengths (German and English forced prefixes,
text, <|endoftext|>), the start token stripped and the shorter row padded with -100, as
transformers' speech seq2seq examples prepare them; the loss is WhisperForConditionalGeneration's
(decoder input = labels shifted right behind decoder_start_token_id). Five AdamW steps (lr 5e-3,
weight decay 0.01, eps 1e-8). Written to tests/fixtures/train-lora-seq2seq/reference.safetensors:
the initial and final LoRA weights in peft's names (`init.` / `final.`), the token sequences, and
the loss before each step and after the last; reference.json holds the transcripts and languages.
"""

import json
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
ITEMS = [("german", "der an the"), ("english", "the cat")]
STEPS = 5


def main():
    torch.manual_seed(0)
    src = os.path.join(ROOT, "whisper-seq2seq")
    ref = load_file(os.path.join(src, "reference.safetensors"))
    model = transformers.WhisperForConditionalGeneration.from_pretrained(src)
    model.eval()  # no dropout; gradients still flow
    tok = transformers.WhisperTokenizer.from_pretrained(src)
    sequences = []
    for language, text in ITEMS:
        tok.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
        sequences.append(tok(text).input_ids)
    start = model.config.decoder_start_token_id
    assert all(s[0] == start for s in sequences), sequences
    width = max(len(s) - 1 for s in sequences)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for i, s in enumerate(sequences):
        labels[i, : len(s) - 1] = torch.tensor(s[1:])

    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, cfg)
    # peft starts lora_B at zero; draw it too, so that the first step already moves lora_A.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    init = {k: v.detach().numpy().copy() for k, v in peft.get_peft_model_state_dict(model).items()}
    features = torch.from_numpy(ref["input_features"])
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def loss_fn():
        return model(input_features=features, labels=labels).loss

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
    final = {k: v.detach().numpy().copy() for k, v in peft.get_peft_model_state_dict(model).items()}

    out = {f"init.{k}": v for k, v in init.items()}
    out.update({f"final.{k}": v for k, v in final.items()})
    for i, s in enumerate(sequences):
        out[f"sequence.{i}"] = np.array(s, dtype=np.int64)
    out["losses"] = np.array(losses, dtype=np.float64)
    dst = os.path.join(ROOT, "train-lora-seq2seq")
    os.makedirs(dst, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, os.path.join(dst, "reference.safetensors"))
    with open(os.path.join(dst, "reference.json"), "w") as f:
        json.dump({"items": [{"language": lang, "text": text} for lang, text in ITEMS]}, f, indent=1)


if __name__ == "__main__":
    main()

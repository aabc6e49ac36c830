#!/usr/bin/env python3
"""Build the Whisper sequence-to-sequence parity fixture tests/fixtures/whisper-seq2seq/ (run by
hand, never by tests or CI), in the pinned environment of make_fixtures.py:

    ~/fixenv/bin/python scripts/make_whisper_fixtures.py

A tiny random `WhisperForConditionalGeneration` (2 encoder and 2 decoder layers, width 32,
vocabulary 64) and `reference.safetensors` with what transformers computes for the two-utterance
batch of the `whisper` fixture (its log-mel input, 100 frames):
  - `logits`: teacher-forced decoder logits for `tokens` ([2, 6] token ids);
  - `greedy` / `beam3`: `generate` from the prefix `prefix` with `suppress`ed tokens and
    `begin_suppress`ed ones at the first step, at most `max_new` new tokens, greedy and 3 beams
    (transformers' generic `GenerationMixin.generate`, the search that Whisper's own `generate`
    ends in), padded with `pad_token_id` after the end token; once with the config's
    `eos_token_id` (never produced here) and once with token 25 (`_eos25`) as the end token.
"""

import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_np

assert torch.__version__.startswith("2.5.1"), torch.__version__
assert transformers.__version__ == "4.46.3", transformers.__version__

from transformers import GenerationMixin, WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT, np32, randomize  # noqa: E402

OUT = os.path.join(ROOT, "whisper-seq2seq")
PREFIX = [1, 10, 11]
SUPPRESS = [5, 6]
BEGIN_SUPPRESS = [2, 7]
MAX_NEW = 10
# A token the model does produce, as end of sequence: finished hypotheses and padding get tested.
EARLY_EOS = 25


def main():
    cfg = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=2,
        decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=50, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[], dropout=0.0, num_mel_bins=80,
    )
    torch.manual_seed(0)
    model = randomize(WhisperForConditionalGeneration(cfg), 21)
    # randomize() keeps positional tables (the encoder's is sinusoidal); the decoder's is learned.
    with torch.no_grad():
        g = torch.Generator().manual_seed(22)
        pos = model.model.decoder.embed_positions.weight
        pos.copy_(0.5 * torch.randn(pos.shape, generator=g))
        # Unit-scale token embeddings (tied to the output) and no final-norm bias, so that the
        # next token depends on the input rather than on one bias direction (varied generations).
        emb = model.model.decoder.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=g))
        model.model.decoder.layer_norm.bias.zero_()
        # Layers that outweigh the token's own embedding in the residual stream (with tied
        # output weights the input token would otherwise win every step).
        for layer in model.model.decoder.layers:
            for lin in (layer.fc2, layer.encoder_attn.out_proj, layer.self_attn.out_proj):
                lin.weight.mul_(8.0)
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    src = load_file(os.path.join(ROOT, "whisper", "reference.safetensors"))
    features = torch.from_numpy(src["batch.input_features"])
    tokens = torch.tensor([[1, 5, 9, 17, 33, 2], [1, 7, 7, 40, 3, 12]])
    ref = {"input_features": np32(features), "tokens": tokens.numpy().astype(np.int64)}
    with torch.no_grad():
        ref["logits"] = np32(model(input_features=features, decoder_input_ids=tokens).logits)
        prefix = torch.tensor([PREFIX, PREFIX])
        common = dict(input_features=features, decoder_input_ids=prefix, max_new_tokens=MAX_NEW, do_sample=False,
                      suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS)
        for eos, tag in [(2, ""), (EARLY_EOS, f"_eos{EARLY_EOS}")]:
            for beams, name in [(1, "greedy"), (3, "beam3")]:
                out = GenerationMixin.generate(model, num_beams=beams, eos_token_id=eos, **common)
                ref[name + tag] = out.numpy().astype(np.int64)
                print(name + tag, ref[name + tag].tolist())
    for k, v in [("prefix", PREFIX), ("suppress", SUPPRESS), ("begin_suppress", BEGIN_SUPPRESS), ("max_new", [MAX_NEW])]:
        ref[k] = np.array(v, dtype=np.int64)
    save_np(ref, os.path.join(OUT, "reference.safetensors"))


if __name__ == "__main__":
    main()

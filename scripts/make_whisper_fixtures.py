#!/usr/bin/env python3
"""Build the Whisper sequence-to-sequence parity fixture tests/fixtures/whisper-seq2seq/ (run by
hand, never by tests or CI), in the pinned environment of make_fixtures.py:

    ~/fixenv/bin/python scripts/make_whisper_fixtures.py

A tiny random `WhisperForConditionalGeneration` (2 encoder and 2 decoder layers, width 32) with a
tiny tokenizer in Whisper's layout (see `tokenizer`; the model's vocabulary is the tokenizer's), and `reference.safetensors` with what transformers computes for the two-utterance
batch of the `whisper` fixture (its log-mel input, 100 frames):
  - `logits`: teacher-forced decoder logits for `tokens` ([2, 7] token ids);
  - `greedy` / `beam3`: `generate` from the prefix `prefix` with `suppress`ed tokens and
    `begin_suppress`ed ones at the first step, at most `max_new` new tokens, greedy and 3 beams
    (transformers' generic `GenerationMixin.generate`, the search that Whisper's own `generate`
    ends in), padded with `pad_token_id` after the end token; once with the config's
    `eos_token_id` and once (`_early`) with a token the model produces as the end token;
and `tokenizer_reference.json`: ids, ids with the English transcription prefix, and decoded text.
"""

import json
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
MAX_NEW = 10


def tokenizer(out_dir):
    """A tiny Whisper tokenizer in the released layout: byte-level BPE (the 256 byte symbols and a
    few merges) in vocab.json + merges.txt with <|endoftext|> last, then as added special tokens
    <|startoftranscript|>, every language of Whisper's table in its order, the task tokens and
    <|notimestamps|> (no timestamp tokens). Saved slow (vocab.json, merges.txt, added_tokens.json)
    and fast (tokenizer.json)."""
    from transformers import WhisperTokenizer, WhisperTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    symbols = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "n"), ("i", "n"), ("e", "r"), ("o", "n"),
              ("Ġ", "a"), ("Ġ", "s"), ("e", "n"), ("Ã", "¼"), ("Ġ", "d"), ("Ġd", "er")]
    vocab = {sym: i for i, sym in enumerate(symbols)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tmp = out_dir + ".tok"
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = ["<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES] + [
        "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    slow = WhisperTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))
    slow.add_special_tokens({"additional_special_tokens": specials})
    slow.save_pretrained(out_dir)
    fast = WhisperTokenizerFast.from_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    shutil.rmtree(tmp)
    return slow, fast


TEXTS = ["the cat sat on the mat", " Der Hund läuft über die Straße", "ça va? 中文 テスト!", "  two  spaces", ""]


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    slow, fast = tokenizer(OUT)
    ids = fast.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    cfg = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=2,
        decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=50, max_target_positions=16,
        vocab_size=len(fast), pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=[], begin_suppress_tokens=[], dropout=0.0, num_mel_bins=80,
    )
    torch.manual_seed(0)
    model = randomize(WhisperForConditionalGeneration(cfg), 21)
    # randomize() keeps positional tables (the encoder's is sinusoidal). The decoder's learned
    # positions get a large scale and the token embeddings (tied to the output) unit scale, with
    # no final-norm bias: each position then favours other tokens, and greedy and beam search
    # produce varied sequences instead of repeating one token.
    with torch.no_grad():
        g = torch.Generator().manual_seed(22)
        pos = model.model.decoder.embed_positions.weight
        pos.copy_(4.0 * torch.randn(pos.shape, generator=g))
        emb = model.model.decoder.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=g))
        model.model.decoder.layer_norm.bias.zero_()
    model.save_pretrained(OUT, safe_serialization=True)
    src = load_file(os.path.join(ROOT, "whisper", "reference.safetensors"))
    features = torch.from_numpy(src["batch.input_features"])
    prefix = [sot, ids("<|en|>"), ids("<|transcribe|>"), ids("<|notimestamps|>")]
    # Whisper suppresses some tokens always and a space and the end token at the first step.
    suppress, begin_suppress = [ids("Ġa"), ids("<|startofprev|>")], [ids("Ġ"), eot]
    tokens = torch.tensor([prefix + [65, 300, 12], prefix[:1] + [ids("<|de|>")] + prefix[2:] + [7, 7, eot]])
    ref = {"input_features": np32(features), "tokens": tokens.numpy().astype(np.int64)}
    with torch.no_grad():
        ref["logits"] = np32(model(input_features=features, decoder_input_ids=tokens).logits)
        common = dict(input_features=features, decoder_input_ids=torch.tensor([prefix, prefix]),
                      max_new_tokens=MAX_NEW, do_sample=False, suppress_tokens=suppress,
                      begin_suppress_tokens=begin_suppress)
        greedy = GenerationMixin.generate(model, num_beams=1, **common)
        # A token the model does produce, as end of sequence: finished hypotheses and padding.
        early = int(greedy[0, len(prefix) + 1])
        for eos, tag in [(eot, ""), (early, "_early")]:
            for beams, name in [(1, "greedy"), (3, "beam3")]:
                out = GenerationMixin.generate(model, num_beams=beams, eos_token_id=eos, **common)
                ref[name + tag] = out.numpy().astype(np.int64)
                print(name + tag, ref[name + tag].tolist())
    for k, v in [("prefix", prefix), ("suppress", suppress), ("begin_suppress", begin_suppress),
                 ("max_new", [MAX_NEW]), ("early_eos", [early]), ("eos", [eot])]:
        ref[k] = np.array(v, dtype=np.int64)
    save_np(ref, os.path.join(OUT, "reference.safetensors"))

    # The tokenizer: ids without special tokens, with the English transcription prefix and the
    # end token, and decoded back with and without the special tokens.
    fast.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    slow.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    cases = []
    for text in TEXTS:
        plain = fast.encode(text, add_special_tokens=False)
        full = fast(text).input_ids
        assert plain == slow.encode(text, add_special_tokens=False) and full == slow(text).input_ids, text
        cases.append({"text": text, "ids": plain, "with_prefix": full,
                      "decoded": fast.decode(full, skip_special_tokens=False),
                      "decoded_skip_special": fast.decode(full, skip_special_tokens=True)})
    with open(os.path.join(OUT, "tokenizer_reference.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases, "vocab_size": len(fast)}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()

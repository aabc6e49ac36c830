#!/usr/bin/env python3
"""Build the tiny parity fixtures under tests/fixtures/ (run by hand, never by tests or CI).

Pinned environment (the CUDA torch wheel from PyPI works; only the CPU is used):

    python3 -m venv ~/fixenv
    ~/fixenv/bin/pip install torch==2.5.1 transformers==4.46.3 safetensors numpy==1.26.4
    ~/fixenv/bin/python scripts/make_fixtures.py

For every supported model_type and layout this writes a Hugging Face model directory
(config.json + safetensors, some saved through task classes so that their key prefixes are
exercised, one sharded, one with the old weight_g/weight_v spelling) and `reference.safetensors`
with the inputs and every hidden state transformers returns, for one utterance and for a padded
batch of two utterances of different lengths. It also writes Whisper log-mel references.

Weights are re-drawn with fan-in scaling (not transformers' tiny init) and every norm gets a
non-trivial weight and bias, so that a wrong layer order or a skipped norm shows up as a large
difference rather than hiding under 1e-4.
"""

import json
import math
import os
import shutil
import struct
import sys
import wave

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file

assert torch.__version__.startswith("2.5.1"), torch.__version__
assert transformers.__version__ == "4.46.3", transformers.__version__

from transformers import (  # noqa: E402
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertForCTC,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMForSequenceClassification,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForAudioClassification,
    WhisperForConditionalGeneration,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SR = 16000

# Shared tiny shape: 32-d, 4 heads, 2 layers, CNN of 3 layers with a 20x downsampling.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=8,  # even, like the real 128: exercises the padding-removal layer
    num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.05,
    layer_norm_eps=1e-5,
)


def audio(n, seed):
    """A deterministic speech-like test signal, quantised to int16 so a WAV file holds it exactly."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 110 + 40 * seed
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
    x = 0.3 * x / np.abs(x).max()
    return np.round(x * 32767).astype(np.int16)


def write_wav(path, pcm, sr=SR, channels=1):
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def randomize(model, seed):
    """Fan-in scaled weights, visible biases, norms away from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # Whisper's sinusoidal table: keep it
            if "norm" in name and "conv" not in name and "weight_" not in name and "original" not in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) + (1.0 if "const" in name else 0.0))
    model.eval()
    return model


def base_of(model):
    for attr in ("wav2vec2", "hubert", "wavlm", "data2vec_audio"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


def np32(t):
    # Contiguous first: safetensors.numpy writes the raw buffer, so a permuted view (Whisper's
    # first hidden state is one) would be stored scrambled.
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def reload(model, out):
    """The references are what transformers computes from the files on disk."""
    return type(model).from_pretrained(out).eval()


def torch_bin_fixture(name, src):
    """The same weights as fixture `src`, as a pickled `pytorch_model.bin` (what many Hub
    checkpoints still ship), with one tensor stored as a transposed view and one at a non-zero
    offset in a larger storage, so the reader's stride and offset handling is exercised."""
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    sd = load_file(os.path.join(ROOT, src, "model.safetensors"))
    w = sd["encoder.layers.0.attention.q_proj.weight"]
    sd["encoder.layers.0.attention.q_proj.weight"] = w.t().contiguous().t()
    b = sd["encoder.layers.0.feed_forward.intermediate_dense.weight"]
    big = torch.cat([torch.full((5,), 7.0), b.flatten()])
    sd["encoder.layers.0.feed_forward.intermediate_dense.weight"] = big[5:].view(b.shape)
    torch.save(sd, os.path.join(out, "pytorch_model.bin"))
    shutil.copy(os.path.join(ROOT, src, "config.json"), out)
    shutil.copy(os.path.join(ROOT, src, "reference.safetensors"), out)
    print(f"{name}: pytorch_model.bin with the weights of {src}")


def ssl_fixture(name, model, normalize, rename_weight_norm=False, shard=False):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    if shard:
        model.save_pretrained(out, max_shard_size="40KB", safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    if rename_weight_norm:
        # The spelling of checkpoints saved before torch's parametrizations (most on the Hub).
        path = os.path.join(out, "model.safetensors")
        sd = load_file(path)
        sd = {
            k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            ): v
            for k, v in sd.items()
        }
        save_file(sd, path, metadata={"format": "pt"})
    model = reload(model, out)
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=normalize, return_attention_mask=True
    )
    if normalize:
        fe.save_pretrained(out)  # absent file = no normalisation, as transformers' pipelines do

    a, b = audio(1600, 1), audio(1100, 2)
    ref = {}
    single = fe(a.astype(np.float32) / 32768.0, sampling_rate=SR, return_tensors="pt")
    batch = fe(
        [a.astype(np.float32) / 32768.0, b.astype(np.float32) / 32768.0],
        sampling_rate=SR,
        padding=True,
        return_tensors="pt",
    )
    core = base_of(model)
    with torch.no_grad():
        o1 = core(single["input_values"], output_hidden_states=True)
        o2 = core(batch["input_values"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    ref["single.raw"] = a.astype(np.float32) / 32768.0
    ref["single.input_values"] = np32(single["input_values"][0])
    for i, h in enumerate(o1.hidden_states):
        ref[f"single.hidden_states.{i}"] = np32(h[0])
    ref["batch.raw.0"] = a.astype(np.float32) / 32768.0
    ref["batch.raw.1"] = b.astype(np.float32) / 32768.0
    ref["batch.input_values"] = np32(batch["input_values"])
    ref["batch.attention_mask"] = np32(batch["attention_mask"].float())
    for i, h in enumerate(o2.hidden_states):
        ref[f"batch.hidden_states.{i}"] = np32(h)
    save_np(ref, os.path.join(out, "reference.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {type(model).__name__}, {n} params, {len(o1.hidden_states)} hidden states")


def whisper_fixture(name, model, n_mels):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    model = reload(model, out)
    # A 1-s window to match the tiny model's 50 positions (the real models: 30 s, 1500).
    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SR, hop_length=160, chunk_length=1, n_fft=400)
    fe.save_pretrained(out)
    a, b = audio(9600, 3), audio(14000, 4)
    fa = fe(a.astype(np.float32) / 32768.0, sampling_rate=SR, return_tensors="pt").input_features
    fb = fe(
        [a.astype(np.float32) / 32768.0, b.astype(np.float32) / 32768.0], sampling_rate=SR, return_tensors="pt"
    ).input_features
    enc = model.get_encoder() if hasattr(model, "get_encoder") else model.encoder
    with torch.no_grad():
        o1 = enc(fa, output_hidden_states=True)
        o2 = enc(fb, output_hidden_states=True)
    ref = {
        "single.raw": a.astype(np.float32) / 32768.0,
        "single.input_features": np32(fa[0]),
        "batch.raw.0": a.astype(np.float32) / 32768.0,
        "batch.raw.1": b.astype(np.float32) / 32768.0,
        "batch.input_features": np32(fb),
    }
    for i, h in enumerate(o1.hidden_states):
        ref[f"single.hidden_states.{i}"] = np32(h[0])
    for i, h in enumerate(o2.hidden_states):
        ref[f"batch.hidden_states.{i}"] = np32(h)
    save_np(ref, os.path.join(out, "reference.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {type(model).__name__}, {n} params, {len(o1.hidden_states)} hidden states")


def logmel_fixture():
    """WhisperFeatureExtractor at its defaults (30-s padding), 80 and 128 mels.

    The full [n_mels, 3000] arrays would be ~1-1.5 MB each, so only the frames that cover the
    audio (plus a margin) are stored; the padded tail is a single value per item (max - 8 after
    scaling), stored as `tail`.
    """
    out = os.path.join(ROOT, "logmel")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    a = audio(24000, 5)
    write_wav(os.path.join(out, "speech_1500ms.wav"), a)
    ref = {"raw": a.astype(np.float32) / 32768.0}
    for n_mels in (80, 128):
        fe = WhisperFeatureExtractor(feature_size=n_mels)
        f = fe(a.astype(np.float32) / 32768.0, sampling_rate=SR, return_tensors="np").input_features[0]
        assert f.shape == (n_mels, 3000), f.shape
        head, tail = f[:, :200], f[:, 200:]
        assert np.ptp(tail) == 0.0, "padded tail is not constant"
        ref[f"mel{n_mels}.head"] = head.astype(np.float32)
        ref[f"mel{n_mels}.tail"] = np.array([tail[0, 0]], dtype=np.float32)
        ref[f"mel{n_mels}.filters"] = fe.mel_filters.astype(np.float32)
    save_np(ref, os.path.join(out, "reference.safetensors"))
    print("logmel: 80 and 128 mels")


def audio_files():
    out = os.path.join(ROOT, "audio")
    os.makedirs(out, exist_ok=True)
    write_wav(os.path.join(out, "mono16k.wav"), audio(1600, 1))
    # Stereo at 22.05 kHz for the downmix + resampling path: both channels equal the same tone.
    x = audio(22050, 6)
    write_wav(os.path.join(out, "stereo22k.wav"), np.stack([x, x], axis=1).reshape(-1), sr=22050, channels=2)
    with open(os.path.join(out, "empty.wav"), "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16))
        f.write(b"data" + struct.pack("<I", 0))
    with open(os.path.join(out, "not_audio.wav"), "wb") as f:
        f.write(b"this is not a RIFF file\n")


def main():
    torch.manual_seed(0)
    os.makedirs(ROOT, exist_ok=True)
    audio_files()
    logmel_fixture()

    # wav2vec2 base layout: group norm in the first conv, post-LN transformer, no conv bias.
    cfg = Wav2Vec2Config(**TINY, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
    ssl_fixture("wav2vec2-base", randomize(Wav2Vec2Model(cfg), 1), normalize=False)
    torch_bin_fixture("wav2vec2-base-bin", "wav2vec2-base")

    # wav2vec2 large / XLS-R layout: layer norm in every conv, pre-LN ("stable") transformer,
    # conv bias; saved through Wav2Vec2ForCTC with the old weight_g/weight_v spelling.
    cfg = Wav2Vec2Config(
        **TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, vocab_size=12
    )
    ssl_fixture("wav2vec2-xlsr", randomize(Wav2Vec2ForCTC(cfg), 2), normalize=True, rename_weight_norm=True)

    # HuBERT base layout, saved sharded; HuBERT large layout through HubertForCTC.
    cfg = HubertConfig(**TINY, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
    ssl_fixture("hubert-base", randomize(HubertModel(cfg), 3), normalize=False, shard=True)
    cfg = HubertConfig(**TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, vocab_size=12)
    ssl_fixture("hubert-large", randomize(HubertForCTC(cfg), 4), normalize=True)

    # data2vec-audio: layer-norm CNN always, a stack of positional convs (odd kernel), post-LN.
    d2v = dict(TINY)
    d2v.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
    cfg = Data2VecAudioConfig(**d2v, conv_bias=True)
    ssl_fixture("data2vec-audio", randomize(Data2VecAudioModel(cfg), 5), normalize=True)

    # WavLM: gated relative position bias; few buckets so that frame distances reach the log region.
    wl = dict(TINY, num_buckets=16, max_bucket_distance=40)
    cfg = WavLMConfig(**wl, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_labels=3)
    ssl_fixture("wavlm-base", randomize(WavLMForSequenceClassification(cfg), 6), normalize=False)
    cfg = WavLMConfig(**wl, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    ssl_fixture("wavlm-large", randomize(WavLMModel(cfg), 7), normalize=True)

    # Whisper encoder: full seq2seq checkpoint (decoder ignored), and the audio-classification class.
    wcfg = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_source_positions=50,
        max_target_positions=16,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        dropout=0.0,
    )
    cfg = WhisperConfig(**wcfg, num_mel_bins=80)
    whisper_fixture("whisper", randomize(WhisperForConditionalGeneration(cfg), 8), 80)
    cfg = WhisperConfig(**wcfg, num_mel_bins=128, num_labels=3, classifier_proj_size=16)
    whisper_fixture("whisper-audiocls", randomize(WhisperForAudioClassification(cfg), 9), 128)

    total = 0
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"fixtures: {total / 1e6:.2f} MB in {ROOT}")


if __name__ == "__main__":
    sys.exit(main())

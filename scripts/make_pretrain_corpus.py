#!/usr/bin/env python3
"""Generate the synthetic multilingual pre-training corpus (run by hand, never by tests or CI).

14 languages, ~13.5 minutes each (~3.1 hours): pseudo-sentences of 6-18 words drawn from the
localized lorem word lists of Faker (MIT licence), spoken by espeak-ng (GPL-3.0, a tool here, not
shipped) with a random voice variant, speed and pitch per utterance, written as 16 kHz mono FLAC
with sox, and listed in a manifest (manifest.tsv: path, id, text, lang, duration, split; ~2% dev).
The text never uses the demo's sentences (scripts/demo_sentences), so pre-training never hears
the demo's dev/test sentences. The audio is not committed; this script rebuilds it bit for bit
given the same Faker, espeak-ng and sox versions.

Needs: apt-get install espeak-ng sox libsox-fmt-all; pip install Faker==40.63.0
Usage: python3 scripts/make_pretrain_corpus.py [--out data/pretrain_synth] [--minutes 13.5]
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from faker import Faker

# (Faker locale, espeak-ng voice, ISO 639-3 code as ML-SUPERB names languages)
LANGUAGES = [
    ("en_US", "en-us", "eng"),
    ("de_DE", "de", "deu"),
    ("es_ES", "es", "spa"),
    ("it_IT", "it", "ita"),
    ("cs_CZ", "cs", "ces"),
    ("pl_PL", "pl", "pol"),
    ("fr_FR", "fr-fr", "fra"),
    ("nl_NL", "nl", "nld"),
    ("da_DK", "da", "dan"),
    ("ru_RU", "ru", "rus"),
    ("uk_UA", "uk", "ukr"),
    ("el_GR", "el", "ell"),
    ("vi_VN", "vi", "vie"),
    ("hy_AM", "hy", "hye"),
]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
RATE = 16000


def synthesize(job):
    """Speak one sentence into a FLAC file; returns its duration in seconds."""
    voice, text, wpm, pitch, path = job
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", tmp.name, text],
            check=True,
        )
        subprocess.run(
            ["sox", tmp.name, "-r", str(RATE), "-c", "1", "-b", "16", path, "norm", "-3"], check=True
        )
    out = subprocess.run(["soxi", "-D", path], check=True, capture_output=True, text=True)
    return float(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/pretrain_synth")
    ap.add_argument("--minutes", type=float, default=13.5, help="audio per language")
    ap.add_argument("--dev-every", type=int, default=50, help="every Nth utterance goes to dev")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "audio"), exist_ok=True)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for locale, voice, lang in LANGUAGES:
            fake = Faker(locale)
            fake.seed_instance(f"speechtune-{lang}")
            rng = random.Random(f"speechtune-voice-{lang}")
            total, n = 0.0, 0
            # espeak-ng speaks ~2.3 words per second at 160 wpm: synthesize in rounds of 16 and
            # stop once the language has its minutes.
            while total < args.minutes * 60:
                jobs, meta = [], []
                for _ in range(16):
                    text = fake.sentence(nb_words=12, variable_nb_words=True)
                    variant = rng.choice(VARIANTS)
                    wpm, pitch = rng.randint(120, 195), rng.randint(20, 80)
                    uid = f"synth_{lang}_{n:05d}"
                    rel = f"audio/{lang}/{uid}.flac"
                    os.makedirs(os.path.join(args.out, "audio", lang), exist_ok=True)
                    jobs.append((f"{voice}+{variant}", text, wpm, pitch, os.path.join(args.out, rel)))
                    split = "dev" if n % args.dev_every == args.dev_every - 1 else "train"
                    meta.append((rel, uid, text, lang, split))
                    n += 1
                for (rel, uid, text, lang_, split), secs in zip(meta, pool.map(synthesize, jobs)):
                    rows.append((rel, uid, text.replace("\t", " "), lang_, f"{secs:.3f}", split))
                    total += secs
            print(f"{lang}: {n} utterances, {total / 60:.1f} min", file=sys.stderr)
    tmp = os.path.join(args.out, "manifest.tsv.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("path\tid\ttext\tlang\tduration\tsplit\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    os.replace(tmp, os.path.join(args.out, "manifest.tsv"))
    hours = sum(float(r[4]) for r in rows) / 3600
    print(f"{len(rows)} utterances, {hours:.2f} h in {args.out}/manifest.tsv", file=sys.stderr)


if __name__ == "__main__":
    main()

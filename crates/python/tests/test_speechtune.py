"""The Python package against the same fixtures as the Rust tests (run: see README, "Python").

Parity: hidden states from `Upstream.features` equal the ones transformers 4.46.3 computed for
the same waveform (tests/fixtures/*/reference.safetensors, scripts/make_fixtures.py).
"""

import json
import os
import shutil
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import speechtune

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
AUDIO = FIXTURES / "audio"


def read_safetensors(path):
    """The F32 tensors of a safetensors file, as numpy arrays (no extra dependency)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start : 8 + n + end], dtype="<f4").reshape(info["shape"])
    return out


@pytest.mark.parametrize("fixture", ["wav2vec2-base", "wav2vec2-xlsr", "hubert-base", "data2vec-audio", "wavlm-base"])
def test_features_match_transformers(fixture):
    ref = read_safetensors(FIXTURES / fixture / "reference.safetensors")
    up = speechtune.Upstream(FIXTURES / fixture)
    states = up.features(ref["single.raw"])
    want = [ref[f"single.hidden_states.{i}"] for i in range(len(states))]
    assert f"single.hidden_states.{len(states)}" not in ref
    assert len(states) == up.info()["hidden_states"]
    for i, (got, w) in enumerate(zip(states, want)):
        assert got.dtype == np.float32 and got.shape == w.shape, (i, got.shape, w.shape)
        assert np.abs(got - w).max() < 1e-4, (fixture, i, np.abs(got - w).max())
    # float64 samples are accepted and give the same result.
    again = up.features(ref["single.raw"].astype(np.float64))
    assert all(np.array_equal(a, b) for a, b in zip(states, again))


def test_upstream_reads_files_and_reports_its_architecture():
    up = speechtune.Upstream("builtin:tiny-pretrained")
    info = up.info()
    assert (info["model_type"], info["layers"], info["hidden_size"]) == ("wav2vec2", 4, 128)
    assert info["samples_per_frame"] == 320 and info["frames_per_second"] == 50.0
    assert info["parameters"] == sum(info["parameters_by_component"].values()) > 0
    # A file is decoded and resampled to 16 kHz mono, as the CLI does: a 1-s file at 22.05 kHz,
    # stereo, gives the same frame count as 1 s at 16 kHz.
    from_file = up.features(AUDIO / "stereo22k.wav")
    from_samples = up.features(np.zeros(16000, dtype=np.float32))
    assert len(from_file) == 5
    assert from_file[0].shape == from_samples[0].shape == (49, 128)
    assert repr(speechtune.Upstream(FIXTURES / "hubert-base")).endswith("hubert-base\": hubert, 2 layers × 32)")


def test_bad_input_raises_clear_errors():
    up = speechtune.Upstream("builtin:tiny-pretrained")
    with pytest.raises(speechtune.SpeechtuneError, match="missing.wav"):
        up.features("missing.wav")
    with pytest.raises(speechtune.SpeechtuneError, match="not_audio.wav"):
        up.features(AUDIO / "not_audio.wav")
    with pytest.raises(ValueError, match=r"1-D array at 16 kHz.*\[2, 100\]"):
        up.features(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 samples"):
        up.features(np.zeros(100, dtype=np.int16))
    with pytest.raises(speechtune.SpeechtuneError, match="sample 3 is NaN"):
        up.features(np.array([0, 0, 0, np.nan], dtype=np.float32))
    with pytest.raises(speechtune.SpeechtuneError, match="no-such-model has no config.json"):
        speechtune.Upstream(ROOT / "no-such-model")
    with pytest.raises(speechtune.SpeechtuneError, match="builtin:nothing is not a built-in model"):
        speechtune.Upstream("builtin:nothing")
    with pytest.raises(speechtune.SpeechtuneError, match="device"):
        speechtune.Upstream("builtin:tiny-pretrained", device="tpu")


def test_long_calls_release_the_gil():
    """Another Python thread keeps running while the model computes."""
    up = speechtune.Upstream("builtin:tiny-pretrained")
    audio = np.random.default_rng(0).standard_normal(16000 * 60).astype(np.float32)
    done = threading.Event()
    took = []

    def work():
        start = time.perf_counter()
        up.features(audio)
        took.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    worker.join()
    gaps = np.diff(ticks)
    # With the GIL held, this loop would stop for the whole call.
    assert took[0] > 0.05, took
    assert len(ticks) > 1000 and gaps.max() < 0.5 * took[0], (took[0], gaps.max(), len(ticks))


def mini_corpus(root):
    """Two languages of the demo corpus, 6 training and 2 dev/test utterances each."""
    for lang in ["deu", "spa"]:
        src = ROOT / "data" / "demo" / "espeak" / lang
        dst = root / "mini" / lang
        (dst / "wav").mkdir(parents=True)
        for split, source, take in [("train", "train", 6), ("dev", "dev", 2), ("test", "dev", 2)]:
            lines = (src / f"transcript_10min_{source}.txt").read_text().splitlines()[:take]
            for line in lines:
                uid = line.split()[0]
                shutil.copy(src / "wav" / f"{uid}.ogg", dst / "wav" / f"{uid}.ogg")
            (dst / f"transcript_10min_{split}.txt").write_text("\n".join(lines) + "\n")


# The committed joint ASR + LID LoRA configuration, made small through overrides (as a user
# would try it): the random tiny upstream, the mini corpus, a few updates.
CONFIG = ROOT / "configs" / "joint_asr_lid_lora.toml"


def small(tmp, **more):
    return {
        "upstream.model": "builtin:tiny",
        "data.root": tmp,
        "data.workers": 1,
        "data.batch.max_seconds": 12.0,
        "train.steps": 6,
        "train.eval_every": 2,
        "train.schedule": {"kind": "linear", "warmup_steps": 2},
        **more,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    mini_corpus(tmp)
    run = tmp / "out"
    summary = speechtune.train(CONFIG, small(tmp, output_dir=run, **{"method.target_modules": ["q_proj"]}), progress=False)
    return tmp, CONFIG, run, summary


def test_train_returns_the_run_summary(trained):
    tmp, config, run, summary = trained
    assert summary["steps"] == 6 and summary["run_dir"] == str(run)
    assert summary["resumed_from"] is None and summary["skipped_steps"] == 0
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    assert summary["last"]["step"] == 6 and summary["first"]["step"] == 0
    assert set(summary["last"]["per_language"]) == {"deu", "spa"}
    assert (run / "best" / "config.toml").is_file()
    # The override reached the configuration that was saved with the run.
    saved = (run / "best" / "config.toml").read_text()
    assert 'target_modules = ["q_proj"]' in saved and "warmup_steps = 2" in saved


def test_evaluate_scores_a_split_and_writes_its_files(trained):
    _, _, run, summary = trained
    report = speechtune.evaluate(run, "test")
    assert report["utterances"] == 4 and report["split"] == "test"
    assert 0.0 <= report["accuracy"] <= 1.0 and report["cer"] >= 0.0
    assert report["per_language"]["deu"]["utterances"] == 2
    assert json.loads(Path(report["json"]).read_text()) == {
        k: v for k, v in report.items() if k not in ("split", "dir", "json", "predictions")
    }
    rows = Path(report["predictions"]).read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("id\tlang\treference\thypothesis")
    # The best checkpoint's dev score is what training reported for it.
    dev = speechtune.evaluate(run, "dev")
    assert dev["cer"] == pytest.approx(summary["best"]["cer"], abs=1e-9)
    with pytest.raises(ValueError, match="expected \"train\", \"dev\" or \"test\""):
        speechtune.evaluate(run, "valid")


def test_transcribe_and_identify_with_a_trained_run(trained):
    tmp, _, run, _ = trained
    wavs = sorted((tmp / "mini" / "deu" / "wav").iterdir())[:2]
    one = speechtune.transcribe(run, wavs[0])
    assert set(one) == {"text", "language"} and isinstance(one["text"], str)
    model = speechtune.Recognizer(run)
    many = model.transcribe([str(w) for w in wavs])
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    ident = model.identify(wavs)
    assert [set(i) for i in ident] == [{"label", "probability"}] * 2
    assert all(i["label"] in {"deu", "spa", "<none>"} for i in ident)
    with pytest.raises(speechtune.SpeechtuneError, match="for Whisper"):
        model.transcribe(wavs[0], language="de")


def test_training_errors_name_the_problem(trained):
    tmp, config, run, _ = trained
    with pytest.raises(speechtune.SpeechtuneError, match="unknown field `stepz`, expected one of `steps`"):
        speechtune.train(config, small(tmp, output_dir=tmp / "x", **{"train.stepz": 1}))
    with pytest.raises(speechtune.SpeechtuneError, match="missing.toml"):
        speechtune.train(tmp / "missing.toml")
    with pytest.raises(TypeError, match=r"overrides\[\"train.lr\"\]: object is not a configuration value"):
        speechtune.train(config, small(tmp, **{"train.lr": object()}))
    # An existing run is not overwritten without resume.
    with pytest.raises(speechtune.SpeechtuneError, match=str(run)):
        speechtune.train(config, small(tmp, output_dir=run), progress=False)


WHISPER = FIXTURES / "whisper-seq2seq"
CLIPS = [AUDIO / "mono16k.wav", AUDIO / "stereo22k.wav"]


def test_whisper_transcribes_and_identifies():
    model = speechtune.Recognizer(WHISPER)
    found = model.identify(CLIPS)
    assert len(found) == 2 and all(0.01 < f["probability"] <= 1.0 for f in found)
    among = model.identify(CLIPS[0], languages=["deu", "fr", "english"])
    assert among["label"] in {"de", "fr", "en"}
    given = model.transcribe(CLIPS, language="de", max_new_tokens=6)
    assert [g["language"] for g in given] == ["de", "de"] and all(isinstance(g["text"], str) for g in given)
    # Batching does not change the result, and the function form gives the same as the object.
    assert [model.transcribe(c, language="de", max_new_tokens=6) for c in CLIPS] == given
    assert speechtune.transcribe(WHISPER, CLIPS, language="de", max_new_tokens=6, batch=1) == given
    beam = model.transcribe(CLIPS[0], language="de", beam=3, max_new_tokens=6)
    assert beam["language"] == "de"
    with pytest.raises(speechtune.SpeechtuneError, match='no language token for "klingon"'):
        model.transcribe(CLIPS[0], language="klingon")
    with pytest.raises(ValueError, match="task"):
        model.transcribe(CLIPS[0], task="summarise")
    with pytest.raises(ValueError, match="beam must be at least 1"):
        model.transcribe(CLIPS[0], beam=0)

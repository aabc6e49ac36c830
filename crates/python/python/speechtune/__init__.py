"""speechtune: pre-train, fine-tune and analyse self-supervised speech models.

The same Rust code as the ``speechtune`` program, without PyTorch::

    import speechtune
    up = speechtune.Upstream("facebook/wav2vec2-base")        # or a folder
    states = up.features("speech.flac")                       # layers + 1 arrays [frames, dim]
    summary = speechtune.train("configs/demo.toml", {"train.steps": 100})
    scores = speechtune.evaluate(summary["run_dir"], "test")
    speechtune.transcribe(summary["run_dir"], "speech.flac")  # {"text": ..., "language": ...}
"""

from ._native import (
    Recognizer,
    SpeechtuneError,
    Upstream,
    __version__,
    evaluate,
    train,
)


def transcribe(model, audio, *, device="cpu", **options):
    """Transcribe one audio (a path or float32 samples at 16 kHz), or a list of them, with a
    trained run, a per-language folder or Whisper: ``Recognizer(model, device).transcribe(audio,
    **options)`` (options: beam, language, task, languages, max_new_tokens, lang, lid, batch)."""
    return Recognizer(model, device).transcribe(audio, **options)


def identify(model, audio, *, device="cpu", **options):
    """The language or class of one audio, or of a list of them:
    ``Recognizer(model, device).identify(audio, **options)`` (options: languages, batch)."""
    return Recognizer(model, device).identify(audio, **options)

__all__ = [
    "Recognizer",
    "SpeechtuneError",
    "Upstream",
    "__version__",
    "evaluate",
    "identify",
    "train",
    "transcribe",
]

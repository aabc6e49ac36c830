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
    identify,
    train,
    transcribe,
)

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

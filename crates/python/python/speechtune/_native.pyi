# Type stubs of the compiled module (crates/python/src/lib.rs).
import os
from typing import Any, Dict, List, Optional, Sequence, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

PathLike = Union[str, os.PathLike]
Audio = Union[PathLike, npt.NDArray[np.float32], npt.NDArray[np.float64]]

class SpeechtuneError(Exception):
    """A speechtune operation failed; the message is the CLI's."""

class Upstream:
    """A pretrained upstream: a model folder, a Hub id or ``builtin:tiny-pretrained``."""

    def __init__(self, model: PathLike, device: str = "cpu", transformers: int = 4) -> None: ...
    def features(self, audio: Audio, *, unpadded: bool = False) -> List[npt.NDArray[np.float32]]:
        """Every hidden state, ``layers + 1`` arrays of shape ``[frames, hidden_size]``."""
    def info(self) -> Dict[str, Any]: ...

class Recognizer:
    """A trained run, a per-language folder or a Whisper model, loaded once."""

    def __init__(self, model: PathLike, device: str = "cpu") -> None: ...
    @overload
    def transcribe(self, audio: Audio, *, beam: int = 1, language: Optional[str] = None, task: str = "transcribe",
                   languages: Optional[Sequence[str]] = None, max_new_tokens: int = 440, lang: Optional[str] = None,
                   lid: Optional[PathLike] = None, batch: int = 8) -> Dict[str, Optional[str]]: ...
    @overload
    def transcribe(self, audio: Sequence[Audio], *, beam: int = 1, language: Optional[str] = None,
                   task: str = "transcribe", languages: Optional[Sequence[str]] = None, max_new_tokens: int = 440,
                   lang: Optional[str] = None, lid: Optional[PathLike] = None,
                   batch: int = 8) -> List[Dict[str, Optional[str]]]: ...
    @overload
    def identify(self, audio: Audio, *, languages: Optional[Sequence[str]] = None, batch: int = 8) -> Dict[str, Any]: ...
    @overload
    def identify(self, audio: Sequence[Audio], *, languages: Optional[Sequence[str]] = None,
                 batch: int = 8) -> List[Dict[str, Any]]: ...

def train(config: PathLike, overrides: Optional[Dict[str, Any]] = None, *, resume: bool = False,
          progress: bool = True) -> Dict[str, Any]: ...
def evaluate(run: PathLike, split: str = "test", *, data: Optional[PathLike] = None, beam: int = 1,
             device: str = "cpu") -> Dict[str, Any]: ...

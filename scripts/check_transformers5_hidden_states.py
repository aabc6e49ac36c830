#!/usr/bin/env python3
"""With transformers 5 installed (not the pinned fixture environment): does its
`output_hidden_states` give, for each fixture, what `speechtune features` gives by default (4.x)
or with `--transformers 5`? A development check; prints one line per fixture.

    python3 scripts/check_transformers5_hidden_states.py
"""

import os

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def main():
    print("transformers", transformers.__version__)
    for name in ["wav2vec2-xlsr", "hubert-large", "wavlm-large", "wav2vec2-base", "whisper"]:
        d = os.path.join(ROOT, name)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        with torch.no_grad():
            if name == "whisper":
                model = transformers.WhisperModel.from_pretrained(d).eval()
                x = torch.from_numpy(ref["single.input_features"])[None]
                h = model.encoder(x, output_hidden_states=True).hidden_states
            else:
                model = transformers.AutoModel.from_pretrained(d).eval()
                x = torch.from_numpy(ref["single.input_values"])[None]
                h = model(x, output_hidden_states=True).hidden_states
        last = h[-1][0].numpy()
        v4 = ref[f"single.hidden_states.{len(h) - 1}"]
        line = f"{name}: {len(h)} hidden states; last vs 4.x reference {np.abs(last - v4).max():.2e}"
        p5 = os.path.join(d, "reference_transformers5.safetensors")
        if os.path.exists(p5):
            v5 = load_file(p5)["single.last_hidden_state_before_norm"]
            line += f", vs the before-norm reference {np.abs(last - v5).max():.2e}"
        others = max(float(np.abs(h[i][0].numpy() - ref[f"single.hidden_states.{i}"]).max()) for i in range(len(h) - 1))
        print(line + f"; other states vs 4.x {others:.2e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What transformers 5 returns as the last of `output_hidden_states` for pre-LN (stable layer norm)
encoders: the last layer's output before the encoder's final layer norm (4.x returns it after).
Computed here with the pinned 4.46.3 (make_fixtures.py's environment) by a forward hook on the
last encoder layer, on each stable fixture's single input; run by hand, outputs committed:

    ~/fixenv/bin/python scripts/make_hidden_states_v5_reference.py

Writes tests/fixtures/{wav2vec2-xlsr,hubert-large,wavlm-large}/reference_transformers5.safetensors
with `single.last_hidden_state_before_norm`. (transformers 5 itself, where available, can confirm
it: `model(x, output_hidden_states=True).hidden_states[-1]`.)
"""

import os

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file

assert transformers.__version__ == "4.46.3", transformers.__version__
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def main():
    for name in ["wav2vec2-xlsr", "hubert-large", "wavlm-large"]:
        d = os.path.join(ROOT, name)
        model = transformers.AutoModel.from_pretrained(d).eval()
        assert model.config.do_stable_layer_norm, name
        ref = load_file(os.path.join(d, "reference.safetensors"))
        x = torch.from_numpy(ref["single.input_values"])[None]
        seen = {}
        hook = model.encoder.layers[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("last", o[0]))
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
        hook.remove()
        last = seen["last"][0].numpy().astype(np.float32)
        assert np.allclose(out.hidden_states[-1][0].numpy(), ref[f"single.hidden_states.{len(out.hidden_states) - 1}"], atol=1e-5)
        assert not np.allclose(last, out.hidden_states[-1][0].numpy(), atol=1e-3), "the final norm must matter"
        save_file({"single.last_hidden_state_before_norm": np.ascontiguousarray(last)},
                  os.path.join(d, "reference_transformers5.safetensors"))
        print(name, last.shape)


if __name__ == "__main__":
    main()

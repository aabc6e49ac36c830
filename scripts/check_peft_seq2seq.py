#!/usr/bin/env python3
"""Load a `seq2seq_asr` LoRA checkpoint of speechtune in Hugging Face peft and decode with it
(a development check, never run by tests or CI; the fixture environment of make_fixtures.py):

    ~/fixenv/bin/python scripts/check_peft_seq2seq.py RUN_DIR/best BASE_MODEL_DIR LANGUAGE WAV...

LANGUAGE as transformers names it (german, polish); WAV 16-kHz mono 16-bit; MAX_NEW_TOKENS
(default 96) bounds each transcript.

`PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(BASE), CHECKPOINT)`
must load every LoRA tensor (peft warns about none missing or unexpected); prints each file's
greedy transcript, for comparison with `speechtune transcribe CHECKPOINT AUDIO --language LANG`.
"""

import os
import sys
import wave

import numpy as np
import peft
import torch
import transformers


def read_wav(path):
    with wave.open(path) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def main():
    checkpoint, base, language, *audio = sys.argv[1:]
    model = transformers.WhisperForConditionalGeneration.from_pretrained(base)
    model = peft.PeftModel.from_pretrained(model, checkpoint)
    loaded = peft.get_peft_model_state_dict(model)
    assert loaded and all(v.abs().sum() > 0 for k, v in loaded.items() if "lora_B" in k), "LoRA not loaded"
    model = model.merge_and_unload().eval()
    try:
        fe = transformers.WhisperFeatureExtractor.from_pretrained(base)
    except OSError:  # no preprocessor_config.json: the window the encoder's positions give
        seconds = model.config.max_source_positions * 2 * 160 // 16000
        fe = transformers.WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, chunk_length=seconds)
    tok = transformers.WhisperTokenizer.from_pretrained(base)
    tok.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    prefix = torch.tensor([tok.prefix_tokens])
    for path in audio:
        x = fe(read_wav(path), sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(x, decoder_input_ids=prefix, max_new_tokens=int(os.environ.get("MAX_NEW_TOKENS", "96")))
        print(f"{path}\t{tok.decode(ids[0], skip_special_tokens=True).strip()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Encoded copies of the fixture recordings, for the decoder tests (run by hand; needs Debian's
# sox and libsox-fmt-mp3: apt-get install sox libsox-fmt-mp3). Run after make_fixtures.py.
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures"
src=logmel/speech_1500ms.wav
sox "$src" audio/speech.flac
sox "$src" -C 4 audio/speech.ogg
sox "$src" -C 64 audio/speech.mp3
# 44.1 kHz stereo FLAC: the downmix + resampling path on a lossless file.
sox "$src" -r 44100 -c 2 audio/speech_44k_stereo.flac
ls -l audio

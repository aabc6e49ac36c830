#!/usr/bin/env bash
# Regenerate the embedded demo corpus under data/demo (run by hand, never by tests or CI).
# Needs Debian's espeak-ng, sox (+ libsox-fmt-all), festival + festvox-kallpc16k and
# pocketsphinx-testdata:
#   apt-get install espeak-ng sox libsox-fmt-all festival festvox-kallpc16k pocketsphinx-testdata
#
# Layout: ML-SUPERB (DATASET/LANG/transcript_10min_{train,dev,test}.txt + wav/ID.*).
#   espeak/{eng,deu,spa,ita,ces,pol}: 20 sentences x 3 voice/speed/pitch variants; sentences
#     1-14 train, 15-17 dev, 18-20 test, so dev/test sentences are never heard in training.
#   festival/eng: the same English sentences in festival's kal_diphone voice.
#   pocketsphinx/eng: real human recordings from pocketsphinx-testdata (BSD-2), test split only.
# Audio is 16 kHz mono, Ogg Vorbis (synthetic) or FLAC (real speech).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=data/demo
SENTENCES=scripts/demo_sentences
PS=/usr/share/pocketsphinx/test/data
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rm -rf "$OUT/espeak" "$OUT/festival" "$OUT/pocketsphinx"

declare -A VOICE=([eng]=en [deu]=de [spa]=es [ita]=it [ces]=cs [pol]=pl)
# espeak-ng voice variant, words per minute, pitch (0-99)
VARIANTS=("m3 145 40" "f2 170 65" "m7 125 50")

split_of() {
  if [ "$1" -le 14 ]; then echo train; elif [ "$1" -le 17 ]; then echo dev; else echo test; fi
}

new_lang_dir() {
  mkdir -p "$1/wav"
  for s in train dev test; do : >"$1/transcript_10min_$s.txt"; done
}

to_ogg() { sox "$1" -r 16000 -c 1 -C 2 "$2" norm -3; }

for lang in eng deu spa ita ces pol; do
  dir=$OUT/espeak/$lang
  new_lang_dir "$dir"
  n=0
  while IFS= read -r text; do
    n=$((n + 1))
    split=$(split_of $n)
    v=0
    for variant in "${VARIANTS[@]}"; do
      read -r var wpm pitch <<<"$variant"
      id=$(printf "espeak_%s_%02d_v%d" "$lang" "$n" "$v")
      espeak-ng -v "${VOICE[$lang]}+$var" -s "$wpm" -p "$pitch" -w "$TMP/x.wav" "$text"
      to_ogg "$TMP/x.wav" "$dir/wav/$id.ogg"
      echo "$id $id $text" >>"$dir/transcript_10min_$split.txt"
      v=$((v + 1))
    done
  done <"$SENTENCES/$lang.txt"
done

dir=$OUT/festival/eng
new_lang_dir "$dir"
n=0
while IFS= read -r text; do
  n=$((n + 1))
  id=$(printf "festival_eng_%02d" "$n")
  echo "$text" | text2wave -eval "(voice_kal_diphone)" -o "$TMP/x.wav"
  to_ogg "$TMP/x.wav" "$dir/wav/$id.ogg"
  echo "$id $id $text" >>"$dir/transcript_10min_$(split_of $n).txt"
done <"$SENTENCES/eng.txt"

dir=$OUT/pocketsphinx/eng
mkdir -p "$dir/wav"
: >"$dir/transcript_10min_test.txt"
add_real() { # id source-file transcript [raw]
  if [ "${4:-}" = raw ]; then
    sox -t raw -r 16000 -e signed -b 16 -c 1 "$2" -r 16000 -c 1 "$dir/wav/$1.flac"
  else
    sox "$2" -r 16000 -c 1 -b 16 "$dir/wav/$1.flac"
  fi
  echo "$1 $1 $3" >>"$dir/transcript_10min_test.txt"
}
while read -r line; do
  text=$(echo "$line" | sed -e 's/^<s> //' -e 's/ *<\/s>.*//')
  file=$(echo "$line" | sed -e 's/.*(\(.*\))$/\1/')
  add_real "pocketsphinx_librivox_${file##*-}" "$PS/librivox/$file.wav" "$text"
done <"$PS/librivox/transcription"
while read -r line; do
  text=$(echo "$line" | sed -e 's/^<s> //' -e 's/ *<\/s>.*//')
  file=$(echo "$line" | sed -e 's/.*(\(.*\))$/\1/')
  add_real "pocketsphinx_cards_$file" "$PS/cards/$file.wav" "$text"
done <"$PS/cards/cards.transcription"
add_real pocketsphinx_goforward "$PS/goforward.raw" "go forward ten meters" raw
add_real pocketsphinx_tidigits_2934z "$PS/tidigits/dhd.2934z.raw" "two nine three four zero" raw

du -sh "$OUT"

#!/usr/bin/env bash
# Throughput of `speechtune preprocess convert` and `segment`, in hours of audio per CPU-hour,
# side by side with ffmpeg (Debian's package: apt install ffmpeg) converting the same files to
# 16-kHz mono FLAC. One thread each, so CPU time is the cost; the demo corpus's audio (Ogg
# Vorbis and FLAC) copied COPIES times is the input.
#
#   bash bench/preprocess.sh            # COPIES=10 by default
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
COPIES="${COPIES:-10}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/release/speechtune"
(cd "$ROOT" && cargo build --release -q -p speechtune-cli)
command -v ffmpeg >/dev/null || { echo "ffmpeg not found: apt install ffmpeg" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for i in $(seq 1 "$COPIES"); do
  mkdir -p "$WORK/src/$i"
  find "$ROOT/data/demo" \( -name '*.ogg' -o -name '*.flac' \) -exec cp {} "$WORK/src/$i/" \;
done
FILES=$(find "$WORK/src" -type f | wc -l)

cpu() { # command... -> prints "wall user+sys" seconds
  /usr/bin/time -f "%e %U %S" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/time"
}

read -r st_wall st_cpu < <(cpu "$BIN" preprocess convert "$WORK/src" "$WORK/flac" --jobs 1)
SECONDS_AUDIO=$(find "$WORK/flac" -name '*.flac' -print0 | xargs -0 soxi -D 2>/dev/null | awk '{s+=$1} END {print s}')
if [ -z "$SECONDS_AUDIO" ]; then
  SECONDS_AUDIO=$(find "$WORK/flac" -name '*.flac' -print0 | xargs -0 -n1 ffprobe -v error -show_entries format=duration -of csv=p=0 | awk '{s+=$1} END {print s}')
fi
ff() {
  find "$WORK/src" -type f | while read -r f; do
    out="$WORK/ff/${f#"$WORK/src/"}"; mkdir -p "$(dirname "$out")"
    ffmpeg -nostdin -loglevel error -threads 1 -y -i "$f" -ac 1 -ar 16000 -sample_fmt s16 "${out%.*}.flac"
  done
}
export -f ff; export WORK
read -r ff_wall ff_cpu < <(cpu bash -c ff)
read -r sg_wall sg_cpu < <(cpu "$BIN" preprocess segment "$WORK/flac" "$WORK/shards" --jobs 1)

rate() { awk -v a="$SECONDS_AUDIO" -v c="$1" 'BEGIN {printf "%.0f", (a / 3600) / (c / 3600)}'; }
echo
echo "input: $FILES files, $(awk -v a="$SECONDS_AUDIO" 'BEGIN {printf "%.2f", a / 3600}') h of audio; $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
printf "%-34s %9s %9s %22s\n" "task (1 thread)" "wall s" "CPU s" "h audio per CPU-hour"
printf "%-34s %9s %9s %22s\n" "speechtune preprocess convert" "$st_wall" "$st_cpu" "$(rate "$st_cpu")"
printf "%-34s %9s %9s %22s\n" "ffmpeg -ac 1 -ar 16000 (per file)" "$ff_wall" "$ff_cpu" "$(rate "$ff_cpu")"
printf "%-34s %9s %9s %22s\n" "speechtune preprocess segment" "$sg_wall" "$sg_cpu" "$(rate "$sg_cpu")"

#!/usr/bin/env bash
# Debian packages for the built-in emoji dataset: the colour emoji font and the emoji names.
set -euo pipefail
font=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
names=/usr/share/unicode/emoji/emoji-test.txt
if [ -f "$font" ] && [ -f "$names" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq fonts-noto-color-emoji unicode-data >/dev/null
else
  echo "warning: install the Noto Color Emoji font and unicode-data's emoji-test.txt for the emoji dataset" >&2
fi

#!/usr/bin/env bash
# Debian packages: the colour emoji font and the emoji names (the built-in emoji dataset), and Chromium
# (the browser the studio's test drives through Playwright).
set -euo pipefail
font=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
names=/usr/share/unicode/emoji/emoji-test.txt
missing=()
[ -f "$font" ] || missing+=(fonts-noto-color-emoji)
[ -f "$names" ] || missing+=(unicode-data)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: install ${missing[*]} (the emoji dataset needs the Noto Color Emoji font and unicode-data's" \
       "emoji-test.txt; the studio's browser test needs Chromium)" >&2
fi

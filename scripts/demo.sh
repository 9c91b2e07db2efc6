#!/usr/bin/env bash
# The demo: a forward pass of a small preset (upgraded to train + sample once the trainer lands).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/jit presets

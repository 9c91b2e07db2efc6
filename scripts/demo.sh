#!/usr/bin/env bash
# The demo: build the built-in emoji dataset, train a small JiT on it for a fixed wall-time budget,
# then sample a grid with one row per class. Re-running continues the same run for another budget.
#   RUN=runs/demo MINUTES=13 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
MINUTES=${MINUTES:-13}
JIT=${JIT:-.venv/bin/jit}
start=$(date +%s)

echo "== 1/3 building the emoji dataset (16 classes, 32 px)"
$JIT data emoji --img-size 32 --grid "$RUN/data.png"

echo "== 2/3 training JiT-Ti/4 for at most $MINUTES minutes"
$JIT train --model JiT-Ti/4 --data emoji --img-size 32 --batch-size 64 --lr 1e-3 --warmup-steps 200 \
  --steps 100000 --max-minutes "$MINUTES" --ema 0.999,0.9995 --ckpt-every 500 --log-every 25 \
  --sample-every 0 --sample-cfg 3.0 --out "$RUN" --resume

echo "== 3/3 sampling one row per class"
$JIT sample "$RUN" --per-class 10 --cfg 3.0 --steps 50 --grid "$RUN/samples.png"
echo "demo finished in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s: $RUN/samples.png"

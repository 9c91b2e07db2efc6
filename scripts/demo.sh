#!/usr/bin/env bash
# The demo: build the built-in emoji dataset, train a small JiT on it for a fixed wall-time budget,
# then sample a grid with one row per class, and print the command that opens the studio on the model.
# Re-running continues the same run for another budget.
#   RUN=runs/demo MINUTES=13 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
MINUTES=${MINUTES:-12}
JIT=${JIT:-.venv/bin/jit}
start=$(date +%s)

echo "== 1/3 building the emoji dataset (16 classes, 32 px)"
$JIT data emoji --img-size 32 --grid "$RUN/data.png"

# JiT-Ti/8 at 32 px: 16 patch tokens of 8x8x3 = 192 values for a width-192 network (plus 8 in-context
# class tokens); 110-240 img/s on 2 CPU cores (busy or quiet), 1,200-2,700 steps of 64 images in
# 12 minutes. Short runs need short EMAs: 0.995 averages over ~200 steps.
echo "== 2/3 training JiT-Ti/8 for at most $MINUTES minutes"
$JIT train --model JiT-Ti/8 --data emoji --img-size 32 --batch-size 64 --lr 1e-3 --warmup-steps 200 \
  --steps 4000 --max-minutes "$MINUTES" --ema 0.995,0.999 --ckpt-every 500 --log-every 50 \
  --sample-every 0 --sample-cfg 3.0 --out "$RUN" --resume

echo "== 3/3 sampling one row per class"
$JIT sample "$RUN" --per-class 8 --cfg 3.0 --steps 25 --batch-size 128 --grid "$RUN/samples.png"
echo "demo finished in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s: $RUN/samples.png"
echo "to sample, compare and look at the run in the browser (http://127.0.0.1:7860):"
echo "  $JIT studio $RUN"

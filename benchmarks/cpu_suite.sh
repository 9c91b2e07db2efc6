#!/usr/bin/env bash
# The CPU reference numbers of docs/results.md (small presets, fp32, all cores): training and
# sampling throughput, so a later change can be compared on the same machine. Run it on a quiet
# machine; about 4 minutes on 2 cores.
#   bash benchmarks/cpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-$( [ -x ../.venv/bin/python ] && echo ../.venv/bin/python || echo python )}
export PYTHONPATH="$(cd .. && pwd)/src:${PYTHONPATH:-}"
for spec in "JiT-Ti/4 32" "JiT-Ti/8 32" "JiT-Ti/8 64" "JiT-Ti/16 64" "JiT-S/4 32"; do
  set -- $spec
  $PY bench_train.py --device cpu --model "$1" --img-size "$2" --batch-size 64 --steps 5 --warmup 2
done
for spec in "JiT-Ti/8 32" "JiT-Ti/16 64"; do
  set -- $spec
  $PY bench_sample.py --device cpu --model "$1" --img-size "$2" --batch-size 64 --steps 25 --cfg 3.0 --repeats 1 --warmup 1
done

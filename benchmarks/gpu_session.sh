#!/usr/bin/env bash
# Everything issue-7 asks of a GPU in one prepared run (about 6-8 minutes on an H200):
# the fast-path numerics check, then training and sampling throughput of JiT-B/16 at 256 px,
# batch 128, bf16, per-block torch.compile. Writes logs under ${OUT:-/tmp/jit-gpu}.
#   PYTHONPATH=src bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-/tmp/jit-gpu}
mkdir -p "$out"
export PYTHONPATH="$(cd .. && pwd)/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python check_fast_path.py --model JiT-B/16 --compile 2>&1 | tee "$out/fast_path.txt"
python bench_train.py --model JiT-B/16 --batch-size 128 --steps 30 --warmup 10 2>&1 | tee "$out/train_eager.txt"
python bench_train.py --model JiT-B/16 --batch-size 128 --steps 30 --warmup 10 --compile 2>&1 | tee "$out/train_compile.txt"
python bench_sample.py --model JiT-B/16 --batch-size 128 --cfg 2.9 --compile --repeats 2 2>&1 | tee "$out/sample_compile.txt"
for model in JiT-L/16 JiT-H/16; do
  python bench_train.py --model $model --batch-size 64 --steps 10 --warmup 5 --compile 2>&1 | tee "$out/train_${model//\//_}.txt"
done
grep -h -E "train:|sample:|PASS|FAIL|peak memory" "$out"/*.txt

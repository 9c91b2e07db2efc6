#!/usr/bin/env bash
# Everything issues 12 and 21 ask of a GPU, in one prepared run of at most 9 minutes (BUDGET_S, default 540 s):
#   1. the Triton kernels and the CUDA-graph step against the PyTorch reference (pytest, on the GPU);
#   2. the fast path's numerics (check_fast_path: whole-model compile, kernels, bf16 residual stream);
#   3. training JiT-B/16 256 px batch 128 bf16, before (per-block compile, PyTorch ops, no graph) and
#      after (whole-model compile, Triton kernels, CUDA graph), each with its per-bucket profile, and the
#      after-step with the PyTorch ops instead of the Triton kernels;
#   4. Heun-50 CFG 2.9 sampling at batch 128 (static shapes), with and without the Triton kernels;
#   5. the CLI as users run it: `jit eval` of 1,024 images of a random-weight export, timed end to end
#      (compile included; --metrics none, so it is generation only);
#   6. a pMF-B/16 training step (pMF objective, JVP, Muon, EDM EMAs; eager), the cheap pMF step of the
#      README recipe (sample tangent, central differences, AdamW; and with the forward-mode JVP in bf16,
#      which should suit a GPU better than fp32 differences), and the JiT-B/16 step of the same batch
#      and precision, also eager; the sample-tangent step compiled (whole model); then the attention JVP
#      routes (function vs math);
#   7. if time is left: sampling at 256/512/128 (one dynamic-batch graph) and fine-tuning memory (full vs
#      LoRA vs frozen trunk, +- gradient checkpointing, B/16 and L/16).
# Each step is cut at its own limit and at the overall budget, so the script always ends in time.
# SKIP="name ..." leaves out steps already measured (names as in timing.txt).
# Logs (one file per step), traces and summary.txt go to ${OUT:-/tmp/jit-gpu}.
#   bash benchmarks/gpu_session.sh
#   SMOKE=1 bash benchmarks/gpu_session.sh     # the same steps on a tiny model on the CPU (plumbing check)
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-/tmp/jit-gpu}
mkdir -p "$out"
export PYTHONPATH="$(cd .. && pwd)/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python}
start=$(date +%s)
budget=${BUDGET_S:-540}

step() {  # step NAME MAX_SECONDS COMMAND...: run with a limit that never passes the budget
  local name=$1 limit=$2 t0 left rc
  shift 2
  t0=$(date +%s)
  left=$((budget - (t0 - start)))
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    echo "$name: skipped (SKIP)" | tee -a "$out/timing.txt"
    return
  fi
  if ((left < 25)); then
    echo "$name: skipped, budget spent" | tee -a "$out/timing.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$out/$name.txt" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$out/timing.txt"
  tail -n 25 "$out/$name.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
if [[ ${SMOKE:-0} == 1 ]]; then
  MODEL=(--model JiT-Ti/4 --img-size 16 --device cpu) TRAIN=(--batch-size 8 --steps 2 --warmup 1 --profile 1)
  SAMPLE=(--steps 3) BATCHES=(8 8,16) COMPILE=none EXPORT=JiT-Ti/4 EVAL=(--num 16 --steps 3 --device cpu)
  PMF=(--model pMF-Ti/4 --img-size 16 --device cpu) JIT_SAME=(--model JiT-Ti/4 --img-size 16 --device cpu)
  FINETUNE=(--models JiT-Ti/4 --img-size 16 --batch-size 4 --device cpu --steps 1)
  JVP=(--model pMF-Ti/4 --image-size 16 --batch-size 4 --device cpu --iters 1)
else
  MODEL=(--model JiT-B/16) TRAIN=(--batch-size 128 --steps 20 --warmup 5 --profile 3) SAMPLE=()
  BATCHES=(128 256,512,128) COMPILE=model EXPORT=JiT-B/16 EVAL=(--num 1024 --steps 50)
  PMF=(--model pMF-B/16) JIT_SAME=(--model JiT-B/16) FINETUNE=(--preset gpu)
  JVP=(--model pMF-B/16 --batch-size 64 --device cuda --iters 5)
fi
SAMPLE_TANGENT=(--optimizer adamw --jvp-tangent sample --fm-fraction 0.5 --cfg-max 0 --label-drop 0)
step tests 120 $PY -m pytest -p no:cacheprovider -v -m "not slow" ../tests/models/test_fast_path.py \
  ../tests/core/test_rng.py ../tests/train/test_graphed_step.py
step fast_path 130 $PY check_fast_path.py "${MODEL[@]}" --compile $COMPILE
step train_before 120 $PY bench_train.py "${MODEL[@]}" "${TRAIN[@]}" --compile blocks --kernels off \
  --trace-dir "$out/traces" --label before
step train_after 170 $PY bench_train.py "${MODEL[@]}" "${TRAIN[@]}" --compile $COMPILE --cuda-graph \
  --trace-dir "$out/traces" --label after
step train_after_no_kernels 150 $PY bench_train.py "${MODEL[@]}" "${TRAIN[@]}" --compile $COMPILE --cuda-graph \
  --kernels off --trace-dir "$out/traces" --label after-no-kernels
step sample_128 120 $PY bench_sample.py "${MODEL[@]}" "${SAMPLE[@]}" --batch-sizes "${BATCHES[0]}" --cfg 2.9 \
  --compile $COMPILE --repeats 2
step sample_128_no_kernels 120 $PY bench_sample.py "${MODEL[@]}" "${SAMPLE[@]}" --batch-sizes "${BATCHES[0]}" \
  --cfg 2.9 --compile $COMPILE --kernels off --repeats 2
$PY -c "import sys; from jit_diffusion import create_model; from jit_diffusion.models.pretrained import save_pretrained
save_pretrained(create_model(sys.argv[1], num_classes=1000), sys.argv[2], overwrite=True)" "$EXPORT" "$out/export" \
  >"$out/export.txt" 2>&1
step eval_cli 150 bash -c 'TIMEFORMAT="eval_cli: %R s end to end"; time "$@"' _ $PY -m jit_diffusion.cli eval \
  "$out/export" "${EVAL[@]}" --cfg 2.9 --batch-size 128 --metrics none --out "$out/eval"
step train_pmf 100 $PY bench_train.py "${PMF[@]}" "${TRAIN[@]}" --profile 0 --kernels off --label pmf
step train_pmf_cheap 80 $PY bench_train.py "${PMF[@]}" "${TRAIN[@]}" "${SAMPLE_TANGENT[@]}" --jvp-method difference \
  --profile 0 --kernels off --label pmf-cheap
step train_pmf_sample_ad 80 $PY bench_train.py "${PMF[@]}" "${TRAIN[@]}" "${SAMPLE_TANGENT[@]}" --profile 0 \
  --kernels off --label pmf-sample-autodiff
step train_pmf_compiled 150 $PY bench_train.py "${PMF[@]}" "${TRAIN[@]}" "${SAMPLE_TANGENT[@]}" --profile 0 \
  --compile $COMPILE --kernels off --label pmf-sample-compiled
step train_jit_eager 80 $PY bench_train.py "${JIT_SAME[@]}" "${TRAIN[@]}" --profile 0 --kernels off --label jit-eager
step pmf_jvp 60 $PY bench_pmf_jvp.py "${JVP[@]}" --precision bf16
# last, if time is left
step sample_batches 150 $PY bench_sample.py "${MODEL[@]}" "${SAMPLE[@]}" --batch-sizes "${BATCHES[1]}" --cfg 2.9 \
  --compile $COMPILE --dynamic-batch --repeats 1
step finetune_memory 150 $PY bench_finetune_memory.py "${FINETUNE[@]}"
{ tail -n 1 "$out"/tests.txt  # pytest's last line (-v above names the test running when a limit struck)
  grep -H -E "passed|failed|error|PASS|FAIL|^\| JiT|^train:|^sample:|^eval_cli:|peak memory|^profile|^  [a-z+-]+ +[0-9.]+ ms|^pMF" \
  "$out"/pmf_jvp.txt "$out"/fast_path.txt "$out"/train_*.txt "$out"/sample_*.txt "$out"/eval_cli.txt "$out"/finetune_memory.txt \
  | sed "s|^$out/||; s|\.txt:| |"; } 2>/dev/null | tee "$out/summary.txt"  # each line led by its step's name
echo "total $(($(date +%s) - start)) s" | tee -a "$out/summary.txt"

#!/usr/bin/env bash
# One-command GPU check for the STEER engine.
#
#   bash benchmarks/gpu_check.sh
#
# With CUDA: the engine's device-aware tests on cuda (row attention, KV cache, merges, bf16 prefill,
# the engine against a no-cache reference), then the speed table at B=32 with the model in bf16
# (plain generate(), transformers CFG, this engine; JSON in benchmarks/results/speed_gpu_b32_bf16.json).
# Without CUDA: the same tests on cpu, and the CUDA parts are skipped with a message, so the script
# is known to run before a GPU is at hand. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
TESTS=(tests/engine/test_rows.py)

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -c "import torch; print('gpu_check: CUDA device:', torch.cuda.get_device_name(0))"
  echo "gpu_check: [1/2] engine tests on cuda"
  "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" --device cuda
  echo "gpu_check: [2/2] speed table, B=32, bf16 weights"
  "$PY" benchmarks/bench_speed.py --device cuda --dtype bfloat16 --batch 32 --trials 3 \
    --skip authors --json benchmarks/results/speed_gpu_b32_bf16.json
  echo "gpu_check: passed (CUDA)"
else
  echo "gpu_check: CUDA is not available here: SKIPPING the cuda tests and the B=32 bf16 speed table."
  echo "gpu_check: running the same engine tests on cpu instead"
  "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" --device cpu
  echo "gpu_check: passed (cpu only; the CUDA parts were skipped: run this script on a CUDA machine)"
fi

#!/usr/bin/env bash
# The short GPU check for when little device time is left (issue10_device.sh is the whole record, ~10 min):
# the device test tier first (correctness of the quantbench runtime against transformers, every family),
# then batch-1 decode rows of the 8B shape for the kernels as they are now. Each step has its own time limit
# so the first result comes back even if the second is cut short.
#
#   bash benchmarks/issue10_quick.sh            with .whl/ carried (bitsandbytes, compressed-tensors and their needs)
# Writes into $OUT: pytest.txt, fast.json, fast.log.
set -uo pipefail
OUT=${OUT:-/tmp/issue10-quick}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp "device test tier"
timeout "${TEST_S:-100}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_fast.py tests/test_cuda.py 2>&1 | tail -40 > "$OUT/pytest.txt"
tail -15 "$OUT/pytest.txt" | cut -c1-300
stamp "batch-1 decode rows"
timeout "${BENCH_S:-70}" python3 benchmarks/fast_gpu_bench.py --methods "${METHODS:-bf16,rtn-w4g128,bnb-nf4}" \
  --batches 1 --repeats 2 --transformers "" --out "$OUT/fast.json" > "$OUT/fast.log" 2>&1
grep -v "^20[0-9][0-9]-" "$OUT/fast.log" | cut -c1-300 | tail -20
stamp "done"

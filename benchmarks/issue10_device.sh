#!/usr/bin/env bash
# Issue 10's GPU record in one call of the device tool (a fresh machine is bare and goes back when idle,
# so the llama.cpp CUDA build happens in the same call as the measurements that need it).
#
#   bash benchmarks/issue10_device.sh CARRY     CARRY holds site-py312.tar.xz (bitsandbytes, compressed-tensors,
#                                               gguf and their needs), llama_cpp_python-0.3.36-stripped.tar.xz
#                                               (benchmarks/llamacpp_cuda_build.sh pack) and gptfast_anchor.py
# Writes into $OUT: fast.json (quantbench runtime + transformers rows), llamacpp.json (GGUF through llama.cpp
# CUDA), anchor.jsonl (the gpt-fast yardstick), pytest.txt (device tier), logs.
#
# Timeline (CPU work overlaps GPU timing; a file lock keeps two GPU timings from overlapping):
#   background: llama.cpp CUDA build (~5 min, 16 cores) | random F16 GGUF written by quantbench's writer
#   foreground: quantbench runtime bench (every family; batch 1, 8, 32 for the target rows) -> transformers bf16
#   then: llama.cpp quantize + measure (background) | device test tier, gpt-fast anchor (under the lock)
set -uo pipefail
CARRY=$(realpath "$1")
OUT=${OUT:-/tmp/issue10-out}
mkdir -p "$OUT" /tmp/site
tar xJf "$CARRY/site-py312.tar.xz" -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GPU_LOCK=/tmp/gpu.lock
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s)
export DEADLINE=$(( T0 + ${BUDGET_S:-500} ))  # llama.cpp quantizes no further type past this
command -v flock >/dev/null || flock() { shift; "$@"; }  # no util-linux: run unlocked
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

cp "$CARRY/llama_cpp_python-0.3.36-stripped.tar.xz" /tmp/ && mkdir -p .devcarry && ln -sf /tmp/llama_cpp_python-0.3.36-stripped.tar.xz .devcarry/
(bash benchmarks/llamacpp_cuda_build.sh build /tmp/lcp-site > /tmp/build.log 2>&1; echo "build rc=$?" >> /tmp/build.log) &
BUILD=$!
(nice -n 5 python3 benchmarks/llamacpp_cuda_bench.py write --dir /tmp/gguf > /tmp/write.log 2>&1; echo "write rc=$?" >> /tmp/write.log) &
WRITE=$!

stamp "quantbench runtime bench"
flock $GPU_LOCK python3 benchmarks/fast_gpu_bench.py --methods "${TARGET_METHODS:-bf16,rtn-w4g128,rtn-w8g128,bnb-nf4,bnb-int8}" \
  --batches 1,8,32 --repeats 2 --transformers "" --out "$OUT/fast_targets.json" 2>&1 | grep -v "^20[0-9][0-9]-" | cut -c1-400
flock $GPU_LOCK python3 benchmarks/fast_gpu_bench.py --methods "${OTHER_METHODS:-bnb-nf4-dq,bnb-fp4,rtn-w3g128,rtn-w2g128}" \
  --batches 1 --repeats 2 --transformers "${TRANSFORMERS_METHODS:-bf16}" --out "$OUT/fast_others.json" 2>&1 | grep -v "^20[0-9][0-9]-" | cut -c1-400
stamp "waiting for the llama.cpp build and the F16 GGUF"
wait $BUILD; tail -3 /tmp/build.log
wait $WRITE; tail -3 /tmp/write.log
stamp "llama.cpp: quantize + measure (background)"
PYTHONPATH=/tmp/lcp-site:$PYTHONPATH python3 benchmarks/llamacpp_cuda_bench.py measure --dir /tmp/gguf --out "$OUT/llamacpp.json" \
  --types "${GGUF_TYPES:-Q4_K_M,Q8_0,Q6_K}" > /tmp/measure.log 2>&1 &
MEASURE=$!
stamp "device test tier"
flock $GPU_LOCK timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_fast.py 2>&1 | tail -30 | tee "$OUT/pytest.txt" | cut -c1-300
stamp "gpt-fast anchor"
flock $GPU_LOCK timeout 200 python3 "$CARRY/gptfast_anchor.py" bf16,int4 128 2>/tmp/anchor.err | tee "$OUT/anchor.jsonl"
tail -3 /tmp/anchor.err
wait $MEASURE; grep -v "^20[0-9][0-9]-" /tmp/measure.log | cut -c1-300 | tail -30
stamp "done"
tail -40 /tmp/build.log > "$OUT/build.log"; cat /tmp/write.log /tmp/measure.log | tail -60 > "$OUT/llamacpp.log"

#!/usr/bin/env bash
# quantbench compare on CUDA for the built-in model; run on a lent GPU through the device tool
# (after benchmarks/device_setup.sh has laid out the carried model, text and wheels).
# Writes compare.json / compare.md / compare.png to ${OUT:-gpu-out}.
set -euo pipefail
OUT=${OUT:-gpu-out}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m quantbench.cli.main methods --device cuda | grep -E "^(fp|bf|bnb|rtn-w4g128|gptq-w4g128|awq)" || true
METHODS=${METHODS:-fp32,bf16,fp16,bnb-int8,bnb-int8-nodecomp,bnb-nf4,bnb-nf4-dq,bnb-fp4,rtn-w4g128,gptq-w4g128,gptq-w3g128,awq-w4g128}
python3 -m quantbench.cli.main compare --device cuda --methods "$METHODS" --out /tmp/qb-gpu \
  --new-tokens 64 --repeats 5 --calibration-samples 128 | tee "$OUT/compare.txt"
cp /tmp/qb-gpu/compare.json /tmp/qb-gpu/compare.md /tmp/qb-gpu/compare.png "$OUT/"

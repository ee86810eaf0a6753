#!/usr/bin/env bash
# Synthetic full-scale bench: Llama-3.1-8B built from its config with random weights on a lent GPU,
# bf16 and every bitsandbytes method applied in place, measured with `quantbench bench`
# (stored bytes vs plan, peak memory, prefill/decode tok/s, bandwidth ceiling and the fraction reached).
# No download: the config is quantbench's preset. Needs ~20 GB of GPU memory and about 5 minutes on an H100.
#
# Through the device tool, after benchmarks/device_setup.sh has installed the carried bitsandbytes wheel:
#   bash benchmarks/device_setup.sh && bash benchmarks/synthetic_bench.sh      (carry: .whl)
# Writes $OUT/synthetic-llama-3.1-8b.{json,md,txt} and gpu.txt; append the .md to the benchmarks record
# (it carries the card, the versions and the date).
set -euo pipefail
OUT=${OUT:-bench-out}
MODEL=${MODEL:-Llama-3.1-8B}
METHODS=${METHODS:-bf16,bnb-int8,bnb-int8-nodecomp,bnb-nf4,bnb-nf4-dq,bnb-fp4}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m quantbench.cli.main plan "$MODEL" --device cuda --context 576 --methods "$METHODS" | tee "$OUT/plan.txt"
python3 -m quantbench.cli.main bench "$MODEL" --device cuda --methods "$METHODS" \
  --prompt-tokens "${PROMPT_TOKENS:-512}" --new-tokens "${NEW_TOKENS:-64}" --batch "${BATCH:-1}" --repeats "${REPEATS:-3}" \
  --json "$OUT/synthetic-llama-3.1-8b.json" --markdown "$OUT/synthetic-llama-3.1-8b.md" | tee "$OUT/synthetic-llama-3.1-8b.txt"

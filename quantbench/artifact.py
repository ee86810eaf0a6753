"""Artifacts: what quantize writes, and how to find the recipe that opens one.

A quantbench artifact is a folder: the format's own files (HF safetensors + config, or model.gguf)
plus quantbench.json saying which method wrote it, from what, with which options and versions.
Folders without quantbench.json open as plain HF models; a bare .gguf file opens in llama.cpp.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from quantbench.errors import QuantbenchError

META_FILE = "quantbench.json"
FORMAT_VERSION = 1


def read_meta(artifact: Path) -> dict:
    if artifact.is_file() and artifact.suffix == ".gguf":
        return {"method": "gguf-file", "runtime": "llama.cpp"}
    if not artifact.exists():
        raise QuantbenchError(f"artifact '{artifact}' not found")
    meta = artifact / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    if (artifact / "config.json").is_file():
        return {"method": "hf", "runtime": "transformers"}
    raise QuantbenchError(f"{artifact}: neither a quantbench artifact, an HF model folder nor a .gguf file")


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces `final`, on failure it is removed."""
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def versions() -> dict:
    import importlib.metadata
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("quantbench", "torch", "transformers", "bitsandbytes", "gguf", "llama_cpp_python", "compressed-tensors", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out

"""Artifacts: what quantize writes, the metadata beside it, and writing files without half-written states.

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


def read_meta(artifact: Path) -> dict:
    if artifact.is_file() and artifact.suffix == ".gguf":
        from quantbench.formats.gguf_metadata import read_meta as read_gguf_meta

        # quantbench's own GGUF files carry their metadata inside (quantbench.* keys); others are foreign
        return read_gguf_meta(artifact) or {"method": "gguf-file", "runtime": "llama.cpp"}
    if not artifact.exists():
        raise QuantbenchError(f"artifact '{artifact}' not found")
    from quantbench.formats import safetensors

    for shard in sorted(artifact.glob("*.safetensors")):
        safetensors.read_header(shard)  # a garbled file is one clear error here, not a loader's traceback later
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


@contextmanager
def atomic_file(final: Path):
    """Yield a temporary sibling path to write; on success it replaces `final` (one rename on the same
    filesystem, so readers see the old file or the new one, never half of it), on failure it is removed.
    The temporary name keeps the suffix, for writers that pick the format from it (savefig, np.savez)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


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

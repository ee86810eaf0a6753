"""Open any artifact with the runtime that its method declares."""

from __future__ import annotations

from pathlib import Path

from quantbench.artifact import read_meta
from quantbench.runtimes.base import Runtime


def open_artifact(artifact: Path, device: str) -> Runtime:
    meta = read_meta(artifact)
    if meta["method"] == "gguf-file":
        from quantbench.runtimes.llamacpp import LlamaCppRuntime

        return LlamaCppRuntime(artifact)  # llama.cpp runs on the CPU here; its device string says so
    if meta["method"] == "hf":
        from quantbench.runtimes.hf import HFRuntime

        return HFRuntime.load(artifact, device)
    from quantbench.recipes import get_recipe

    return get_recipe(meta["method"]).open(artifact, device)

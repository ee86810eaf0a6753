"""Open any artifact with a runtime: the one asked for, or the default for the device.

Runtimes (`--runtime`): "transformers" (the recipe's own runtime for HF-format artifacts), "llama.cpp"
(GGUF files), "quantbench" (runtimes/fast: its own decoder over the packed weights, CUDA graphs).
Default ("auto", None): on CUDA the quantbench runtime for every family it runs, llama.cpp for GGUF
(all layers on the GPU when the installed llama.cpp was built with CUDA), and the recipe's runtime on a
CPU. A runtime asked for by name that cannot run the artifact raises one error saying which can.
"""

from __future__ import annotations

from pathlib import Path

from quantbench.artifact import read_meta
from quantbench.errors import QuantbenchError
from quantbench.runtimes.base import Runtime

def check_runtime(runtime: str | None) -> str | None:
    from quantbench.runtimes import runtime_names

    if runtime in (None, "auto"):
        return None
    if runtime not in runtime_names():
        raise QuantbenchError(f"unknown runtime '{runtime}'; choose one of {', '.join(runtime_names())} (or auto)")
    return runtime


def is_gguf(artifact: Path) -> bool:
    meta = read_meta(artifact)
    if meta["method"] in ("fit", "gguf-file"):  # quantbench fit's GGUF in a compare folder; a foreign .gguf
        return True
    from quantbench.recipes import get_recipe

    return meta["method"] != "hf" and get_recipe(meta["method"]).runtime == "llama.cpp"


def fast_runtime_runs(artifact: Path) -> bool:
    """Whether the quantbench runtime reads this artifact's family and architecture (from config.json)."""
    from quantbench.runtimes.fast import stored

    if not artifact.is_dir() or not (artifact / "config.json").is_file():
        return False
    try:
        stored.artifact_kind(stored.load_config(artifact))
    except QuantbenchError:
        return False
    return True


def default_runtime(artifact: Path, device: str) -> str:
    if is_gguf(artifact):
        return "llama.cpp"
    if device.startswith("cuda") and fast_runtime_runs(artifact):
        return "quantbench"
    return read_meta(artifact).get("runtime", "transformers")  # the runtime its recipe names (an HF folder: transformers)


def open_artifact(artifact: Path, device: str, runtime: str | None = None) -> Runtime:
    artifact = Path(artifact)
    meta = read_meta(artifact)
    # The two runtimes opened here by name are dispatched before any check: checking a name imports every
    # runtime module (runtime_names), and a llama.cpp measurement must not carry transformers' modules
    # in its process (+61 MB peak RSS for the default model's GGUF rows, issue-8 before/after run).
    runtime = runtime if runtime not in (None, "auto") else default_runtime(artifact, device)
    if runtime == "llama.cpp":
        if not is_gguf(artifact):
            raise QuantbenchError(f"{artifact} is not a GGUF artifact; llama.cpp runs GGUF files: use --runtime transformers or quantbench")
        from quantbench.runtimes.llamacpp import LlamaCppRuntime, gpu_offload_available

        from quantbench.recipes.gguf import ARTIFACT_FILE

        path = artifact if artifact.is_file() else artifact / ARTIFACT_FILE
        # On CUDA with a CPU-only llama.cpp build, llama.cpp runs on the CPU and its device string says so.
        on = device if device.startswith("cuda") and gpu_offload_available() else "cpu"
        return LlamaCppRuntime(path, device=on)
    if is_gguf(artifact):
        raise QuantbenchError(f"{artifact} is a GGUF file, which only llama.cpp runs: use --runtime llama.cpp")
    if runtime == "quantbench":
        from quantbench.runtimes.fast import FastRuntime

        return FastRuntime.load(artifact, device)
    check_runtime(runtime)  # any other name: a runtime some module defines, or one clear error
    if meta["method"] == "hf":
        from quantbench.runtimes.hf import HFRuntime

        return HFRuntime.load(artifact, device)
    from quantbench.recipes import get_recipe

    return get_recipe(meta["method"]).open(artifact, device)

"""fit inside `quantbench compare --memory-budget`: the fitted GGUF's row, and every row's runtime
memory under one rule, so the recommendation can judge all of them against the same budget."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from quantbench.artifact import META_FILE, atomic_dir, versions, write_json_atomic
from quantbench.errors import QuantbenchError
from quantbench.eval.results import ResultRow
from quantbench.workload import Workload, evaluate_artifact

# `compare --methods ...,fit`: quantbench fit's artifact for the --memory-budget, beside the uniform methods.
FIT_METHOD = "fit"


def fit_row(work: Workload, budget: int, context: int, out_dir: Path, device: str, reference: Path, reference_ppl: float,
            tasks, progress: Callable[[str], None]) -> ResultRow:
    """quantbench fit's artifact for the budget, measured like every other row."""
    from quantbench.fit.pipeline import FitConfig, fit_model

    artifact = out_dir / "artifacts" / FIT_METHOD
    try:
        with atomic_dir(artifact) as tmp:
            t0 = time.perf_counter()
            report = fit_model(work, FitConfig(budget_bytes=budget, context=context), tmp / "model.gguf", device, progress)
            meta = {"method": FIT_METHOD, "runtime": "llama.cpp", "format_version": 1, "device": device,
                    "source": {"name": work.source.name, "path": str(work.source.path), "fingerprint": work.source.fingerprint},
                    "weight_bytes": report["weights_bytes"], "bits_per_weight": report["bits_per_weight"],
                    "quantize_seconds": time.perf_counter() - t0, "fit": {k: v for k, v in report.items() if k != "plan"},
                    "versions": versions()}
            write_json_atomic(tmp / META_FILE, meta)
        progress("measuring")
        row = evaluate_artifact(work, artifact, device, reference, reference_ppl, tasks)
    except QuantbenchError as exc:
        progress(f"FAILED: {exc}")
        return ResultRow.not_measured(FIT_METHOD, "llama.cpp", device, f"failed: {exc}")
    return replace(row, kv_cache_type=report["kv_cache_type"], predicted_kld=report["predicted_kld"])


def add_runtime_memory(work: Workload, rows: list[ResultRow], budget: int, context: int,
                       progress: Callable[[str], None]) -> tuple[list[ResultRow], dict]:
    """Every finished row's memory under one rule (quantbench.fit.budget): weights + KV cache at `context`
    + llama.cpp's compute and output buffers for this model (measured once in llama.cpp, used for every
    row: transformers does not report its own). KV cache: a fitted file's recorded type, F16 for other
    llama.cpp rows, the compute dtype for transformers rows. Returns the rows with `runtime_memory` and
    the rule for the protocol section."""
    from quantbench.fit.budget import RuntimeSetting
    from quantbench.fit.pipeline import FitConfig, prepare_fit
    from quantbench.plan.memory import kv_cache_bytes as plan_kv_cache_bytes

    progress(f"runtime memory of every row at context {context}")
    setup = prepare_fit(work, FitConfig(budget_bytes=budget, context=context))
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}
    out = []
    for row in rows:
        if not row.ok or row.storage is None:
            out.append(row)
            continue
        weights = row.storage.weight_bytes
        if row.runtime == "llama.cpp":
            kv_type = row.kv_cache_type or "F16"
            kv_bytes, buffers = setup.runtime[kv_type]
        else:
            kv_type = row.measured.dtype or "bfloat16"
            kv_bytes = plan_kv_cache_bytes(setup.arch, context, 1, dtype_bytes.get(kv_type, 2), row.runtime)
            buffers = setup.runtime["F16"][1]
        out.append(replace(row, runtime_memory={"weights": weights, "kv_cache": kv_bytes, "kv_cache_type": kv_type,
                                                "buffers": buffers, "total": weights + kv_bytes + buffers}))
    rule = {"context": context, "rule": "weights + KV cache at the context (padded to 256 cells) + llama.cpp's compute "
            "and output buffers for this model (n_ubatch 512, flash attention on, CPU), the same buffers for every row",
            "llama_cpp_flags_f16": RuntimeSetting(context).llama_cpp_flags()}
    return out, rule

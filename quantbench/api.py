"""The Python API: quantize, evaluate, compare, fit, generate, plan, bench. The CLI is a thin layer over these
and imports nothing else of quantbench. The steps they share (prepare the tokens, the cached reference,
one method quantized, one artifact measured) live in quantbench.workload."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from quantbench.arch import ArchSpec
from quantbench.artifact import read_meta, versions, write_text_atomic
from quantbench.bench import BenchSettings
from quantbench.errors import QuantbenchError
from quantbench.eval.perplexity import PerplexityProtocol
from quantbench.eval.results import ResultRow
from quantbench.fit.budget import KV_CACHE_TYPES
from quantbench.fit.rows import FIT_METHOD
from quantbench.fit.sensitivity import SensitivitySettings
from quantbench.plan import DEFAULT_CONTEXT as PLAN_CONTEXT
from quantbench.presets import preset_names
from quantbench.report.recommend import RANK_BY
from quantbench.settings import DEFAULTS, Settings
from quantbench.sources.model import DEFAULT_MODEL, resolve_model
from quantbench.worker import run_in_fresh_process
from quantbench.workload import (Workload, artifact_matches, ensure_reference, evaluate_artifact, prepare, quantize_to,
                                 storage_summary)

log = logging.getLogger(__name__)

# What the CLI (and any script) may use; the CLI imports nothing else of quantbench. prepare,
# ensure_reference, quantize_to, evaluate_artifact and storage_summary (quantbench.workload) are here
# for scripts that compose the steps themselves (benchmarks/).
__all__ = [
    "BenchSettings", "DEFAULTS", "DEFAULT_METHODS", "DEFAULT_MODEL", "FIT_METHOD", "KV_CACHE_TYPES", "PLAN_CONTEXT",
    "PerplexityProtocol", "QuantbenchError", "RANK_BY", "SensitivitySettings", "Settings", "Workload", "bench", "compare",
    "ensure_reference", "evaluate", "evaluate_artifact", "fit", "format_bench", "format_compare", "format_fit",
    "format_plan", "format_row", "generate", "methods", "plan", "prepare", "preset_names", "quantize", "quantize_to",
    "resolve_methods", "storage_summary", "write_report", "write_text_atomic",
]

# The default compare: bitsandbytes, GGUF and RTN beside the floats, under 3 minutes on 2 CPU cores.
# GPTQ and AWQ calibrate layer by layer (about 3 minutes each here), so they are one flag away: --methods.
# `--methods ...,fit`: quantbench fit's artifact for the --memory-budget, beside the uniform methods.
DEFAULT_METHODS = ("fp32", "bf16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq", "gguf-q8_0", "gguf-q4_k_m", "rtn-w4g128")


# A progress callback: a message, and for the steps of a longer run, how many are done of how many.
Progress = Callable[..., None]


def _no_progress(message: str, done: int | None = None, total: int | None = None) -> None:
    pass


def resolve_methods(methods: list[str] | None) -> list[str]:
    from quantbench.recipes import all_recipes, get_recipe

    if not methods:
        return list(DEFAULT_METHODS)
    if methods == ["all"]:
        return [r.name for r in all_recipes()]
    for m in methods:
        if m != FIT_METHOD:
            get_recipe(m)  # unknown names fail before any work starts
    return methods


def compare(model: str | None = None, methods: list[str] | None = None, text: str | None = None,
            out_dir: Path = Path("quantbench-out"), device: str | None = None, settings: Settings = DEFAULTS,
            tasks_file: Path | None = None, memory_budget_bytes: int | None = None, trust_remote_code: bool = False,
            progress: Progress = _no_progress, context: int = PLAN_CONTEXT, devices: list[str] | None = None,
            rank_by: str = "kld") -> dict:
    """Quantize with every method, measure each in a fresh process, and return the comparison.
    `progress(message, done, total)` hears each step; done/total count finished methods.

    With `memory_budget_bytes`, every row also gets its runtime memory at `context` (quantbench.fit.budget:
    weights + KV cache + llama.cpp's buffers) and the recommendation picks among the rows that fit;
    the method name "fit" adds quantbench fit's artifact for that budget.

    With several GPUs (`devices`, default: every visible GPU on CUDA) independent methods run at once,
    one fresh process per GPU that sees only its GPU (CUDA_VISIBLE_DEVICES); each method's numbers are
    the ones it gives on one GPU.

    `rank_by`: the recommendation's rule ranks by mean KLD ("kld") or by accuracy on `tasks_file` ("task").
    """
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from quantbench.device import isolate_gpu, resolve_device, resolve_devices
    from quantbench.fit.rows import add_runtime_memory, fit_row

    device = resolve_device(device)
    gpus = resolve_devices(devices, device)
    names = resolve_methods(methods)
    if FIT_METHOD in names and memory_budget_bytes is None:
        raise QuantbenchError("the method 'fit' needs --memory-budget: it builds the best GGUF for that budget")
    if rank_by not in RANK_BY:
        raise QuantbenchError(f"--rank-by {rank_by}: use one of {', '.join(RANK_BY)}")
    if rank_by == "task" and not tasks_file:
        raise QuantbenchError("--rank-by task needs --tasks FILE (the items to score)")
    progress("preparing model and text")
    work = prepare(model, text, settings, trust_remote_code)
    tasks = _load_tasks(tasks_file, work)
    progress("reference log-probabilities")
    env, inside = isolate_gpu(gpus[0])
    reference, reference_ppl = ensure_reference(work, inside, env)
    reference_tasks = _reference_task_accuracy(work, inside, env, tasks) if tasks else None
    started = time.perf_counter()
    free: queue.Queue = queue.Queue()
    for gpu in gpus:
        free.put(gpu)
    done: list[str] = []
    lock = threading.Lock()
    progress("methods", 0, len(names))

    def run(i: int, method: str) -> ResultRow:
        gpu = free.get()
        try:
            if method == FIT_METHOD:
                row = fit_row(work, memory_budget_bytes, context, Path(out_dir), device, reference, reference_ppl, tasks,
                              lambda msg: progress(f"[{i}/{len(names)}] fit: {msg}"))
            else:
                row = _compare_one(work, method, f"[{i}/{len(names)}]" + (f" {gpu}" if len(gpus) > 1 else ""), gpu, out_dir,
                                   reference, reference_ppl, tasks, progress)
        finally:
            free.put(gpu)
        with lock:
            done.append(method)
            progress(f"{method} done", len(done), len(names))
        return row

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        rows = list(pool.map(run, range(1, len(names) + 1), names))
    wall_seconds = time.perf_counter() - started
    protocol = {"perplexity": work.settings.protocol.describe(), "bos": work.bos_rule, "reference_ppl": reference_ppl,
                **_reference_uncertainty(reference), "reference": str(reference), "calibration": {"fraction": settings.calibration_fraction,
                "samples": len(work.calibration), "length": settings.calibration_length},
                "speed": {"prompt_tokens": len(work.prompt_ids), "new_tokens": settings.new_tokens,
                          "batch": settings.batch, "repeats": settings.repeats, "warmup": settings.warmup,
                          "measured": settings.measure_speed},
                "kld": "KL(P_ref || Q) per scored token, natural log, summed in float64"}
    if reference_tasks:
        protocol["reference_tasks"] = reference_tasks
    if memory_budget_bytes is not None:
        rows, protocol["runtime_memory"] = add_runtime_memory(work, rows, memory_budget_bytes, context, progress)
    rows_json = [r.to_json() for r in rows]
    result = {
        "model": {"name": work.source.name, "path": str(work.source.path), "fingerprint": work.source.fingerprint,
                  "params": ArchSpec.from_config(work.source.config()).num_params()},
        "text": {"name": work.text.name, "fingerprint": work.text.fingerprint},
        "protocol": protocol,
        "rows": rows_json,
        "devices": gpus,
        "methods_wall_seconds": wall_seconds,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    from quantbench.report.recommend import recommend

    per_token = {r.method: r.per_token for r in rows if r.per_token}
    result["recommendation"] = recommend(rows_json, memory_budget_bytes, per_token, rank_by)
    return result


def _reference_task_accuracy(work: Workload, device: str, env: dict | None, tasks: list[dict]) -> dict:
    """The full-precision model's own accuracy on the same items (a fresh process), shown beside every method's."""
    from quantbench.eval.tasks import PER_ITEM
    from quantbench.jobs import TaskJob

    accuracy = run_in_fresh_process(TaskJob(str(work.source.path), device, tuple(tasks)), env)
    accuracy.pop(PER_ITEM, None)
    return accuracy


def _reference_uncertainty(reference: Path) -> dict:
    """The reference's own PPL interval (the accumulator that scores every method) and how intervals are made."""
    from quantbench.eval.reference import Reference, reference_quality
    from quantbench.eval.uncertainty import BootstrapConfig

    opened = Reference(reference)
    interval = reference_quality(opened)["ppl_interval"]
    return {"reference_ppl_interval": interval, "reference_storage": opened.meta["storage"],
            "uncertainty": {"method": BootstrapConfig().describe(interval["blocks"]),
                            "per_token_se": "llama.cpp's perplexity.cpp: sqrt((mean x^2 - mean^2) / (n - 1)), "
                                            "beside every interval (narrower: neighbouring tokens are correlated)",
                            "paired": "differences between methods are per token on the same tokens (per item for tasks)"}}


def _compare_one(work: Workload, method: str, tag: str, gpu: str, out_dir: Path, reference: Path, reference_ppl: float,
                 tasks, progress: Progress) -> ResultRow:
    """Quantize (unless a matching artifact exists) and measure one method, in fresh processes that see only `gpu`."""
    from dataclasses import replace

    from quantbench.device import isolate_gpu
    from quantbench.recipes import get_recipe

    env, device = isolate_gpu(gpu)
    recipe = get_recipe(method)
    reason = recipe.unavailable_reason(device)
    if reason:
        progress(f"{tag} {method}: UNAVAILABLE on {device}: {reason}")
        return ResultRow.not_measured(method, recipe.runtime, device, f"unavailable: {reason}")
    artifact = Path(out_dir) / "artifacts" / method
    t0 = time.perf_counter()
    try:
        if not artifact_matches(artifact, work, method, device):
            progress(f"{tag} {method}: quantizing")
            quantize_to(work, method, artifact, device, env=env)
        progress(f"{tag} {method}: measuring")
        row = evaluate_artifact(work, artifact, device, reference, reference_ppl, tasks, env)
    except QuantbenchError as exc:
        progress(f"{tag} {method}: FAILED: {exc}")
        return ResultRow.not_measured(method, recipe.runtime, device, f"failed: {exc}")
    metrics = row.measured.metrics
    progress(f"{tag} {method}: done in {time.perf_counter() - t0:.0f}s (ppl {metrics['ppl']:.3f}, kld {metrics['kld_mean']:.4f})")
    return replace(row, gpu=gpu)


def _load_tasks(tasks_file: Path | None, work: Workload) -> list[dict] | None:
    if not tasks_file:
        return None
    from quantbench.eval.tasks import load_tasks

    return load_tasks(Path(tasks_file), work.tokenizer)


def quantize(model: str | None, method: str, out: Path, text: str | None = None, device: str | None = None,
             settings: Settings = DEFAULTS, trust_remote_code: bool = False) -> dict:
    from quantbench.device import resolve_device

    device = resolve_device(device)
    work = prepare(model, text, settings, trust_remote_code)
    return quantize_to(work, method, Path(out), device)


def evaluate(artifact: Path, reference_model: str | None = None, text: str | None = None, device: str | None = None,
             settings: Settings = DEFAULTS, tasks_file: Path | None = None) -> dict:
    """Measure one artifact against the reference model it came from (or the one given)."""
    from quantbench.device import resolve_device

    device = resolve_device(device)
    meta = read_meta(Path(artifact))
    if reference_model is None:
        if not meta.get("source", {}).get("name"):
            raise QuantbenchError(f"{artifact} does not say which model it came from; pass --reference MODEL")
        # The name as typed (it keys the cached reference), unless it was a relative path that no longer
        # resolves from here: then the resolved folder recorded at quantize time.
        name, path = meta["source"]["name"], meta["source"].get("path")
        reference_model = name if name == DEFAULT_MODEL or Path(name).exists() or not (path and Path(path).is_dir()) else path
    work = prepare(reference_model, text, settings)
    tasks = _load_tasks(tasks_file, work)
    reference, reference_ppl = ensure_reference(work, device)
    row = evaluate_artifact(work, Path(artifact), device, reference, reference_ppl, tasks).to_json()
    return {**row, "reference_ppl": reference_ppl, "protocol": work.settings.protocol.describe(), "bos": work.bos_rule}


def generate(artifact: str | None, prompt: str, max_new_tokens: int = 64, device: str | None = None) -> str:
    """Greedy completion with any artifact (or the default model when artifact is None)."""
    from transformers import AutoTokenizer

    from quantbench.device import resolve_device
    from quantbench.recipes.open import open_artifact

    device = resolve_device(device)
    path = Path(artifact) if artifact else resolve_model(None).path
    if path.is_file() and path.suffix == ".gguf":
        runtime = open_artifact(path, device)  # llama.cpp tokenizes with the GGUF's own vocabulary
        return runtime.detokenize(runtime.generate(runtime.tokenize(prompt), max_new_tokens))
    tok_dir = path if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file() else None
    if tok_dir is None:
        meta = read_meta(path)
        tok_dir = resolve_model(meta.get("source", {}).get("name")).path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ids = tokenizer(prompt)["input_ids"]
    runtime = open_artifact(path, device)
    new = runtime.generate(ids, max_new_tokens)
    return tokenizer.decode(new, skip_special_tokens=True)


def fit(model: str | None, budget_bytes: int, out: Path, context: int = PLAN_CONTEXT, text: str | None = None,
        device: str | None = None, settings: Settings = DEFAULTS, exclude_types: tuple[str, ...] = (),
        kv_cache_types: tuple[str, ...] | None = None, sensitivity: SensitivitySettings | None = None,
        trust_remote_code: bool = False, progress: Progress = _no_progress) -> dict:
    """The best GGUF under `budget_bytes` of llama.cpp memory at `context`, chosen tensor by tensor (quantbench fit)."""
    from quantbench.device import resolve_device
    from quantbench.fit.pipeline import FitConfig, fit_model

    device = resolve_device(device)
    config = FitConfig(budget_bytes=budget_bytes, context=context, kv_cache_types=tuple(kv_cache_types or KV_CACHE_TYPES),
                       exclude_types=tuple(exclude_types), sensitivity=sensitivity or SensitivitySettings())
    work = prepare(model, text, settings, trust_remote_code)
    return fit_model(work, config, Path(out), device, progress)


def format_fit(report: dict) -> str:
    from quantbench.report.fit_text import fit_lines

    return fit_lines(report)


def methods(device: str | None = None) -> list[dict]:
    """Every registered method, and whether it runs on `device` here (unavailable_reason None: it does)."""
    from quantbench.device import resolve_device
    from quantbench.recipes import all_recipes

    device = resolve_device(device)
    return [{"method": r.name, "family": r.family, "runtime": r.runtime, "description": r.description, "device": device,
             "unavailable_reason": r.unavailable_reason(device)} for r in all_recipes()]


def plan(model: str | None = None, context: int = PLAN_CONTEXT, batch: int = 1, device_memory_bytes: int | None = None,
         methods: list[str] | None = None, device: str | None = None,
         calibration_samples: int = DEFAULTS.calibration_samples, calibration_length: int = DEFAULTS.calibration_length) -> dict:
    """Exact memory of every method from the model's config alone (quantbench.plan); nothing downloaded
    but a hub model's config.json."""
    from quantbench import plan as planner

    return planner.plan(model, context=context, batch=batch, device_memory_bytes=device_memory_bytes, methods=methods,
                        device=device, calibration_samples=calibration_samples, calibration_length=calibration_length)


def bench(model: str | None = None, settings: BenchSettings = BenchSettings(), progress: Progress = _no_progress) -> dict:
    """Speed and memory of each method on random weights of the model's architecture (quantbench.bench)."""
    from quantbench.bench import run_bench

    return run_bench(model, settings, progress=progress)


def format_plan(result: dict) -> str:
    from quantbench.report.plan_table import format_table

    return format_table(result)


def format_bench(result: dict, markdown: bool = False) -> str:
    from quantbench.report.bench_table import to_markdown, to_text

    return to_markdown(result) if markdown else to_text(result)


def format_compare(result: dict) -> str:
    from quantbench.report.tables import text_table

    return text_table(result)


def format_row(row: dict) -> str:
    from quantbench.report.tables import row_lines

    return row_lines(row)


def write_report(result: dict, out_dir: Path, json_path: Path | None = None) -> list[Path]:
    """compare.json / .md / .csv / .png in out_dir (each written atomically); returns the paths."""
    from quantbench.report.tables import write_all

    return write_all(result, out_dir, json_path)

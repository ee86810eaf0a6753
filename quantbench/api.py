"""The Python API: quantize, evaluate, compare, generate. The CLI is a thin layer over these."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from quantbench.arch import ArchSpec
from quantbench.artifact import META_FILE, atomic_dir, read_meta, versions, write_json_atomic
from quantbench.errors import QuantbenchError
from quantbench.eval.perplexity import PerplexityProtocol, make_windows
from quantbench.sources.model import ModelSource, cache_dir, resolve_model
from quantbench.sources.text import Text, calibration_samples, load_text, split_tokens
from quantbench.worker import run_in_fresh_process

log = logging.getLogger(__name__)

# The default compare: bitsandbytes, GGUF and RTN beside the floats, under 3 minutes on 2 CPU cores.
# GPTQ and AWQ calibrate layer by layer (about 3 minutes each here), so they are one flag away: --methods.
# `--methods ...,fit`: quantbench fit's artifact for the --memory-budget, beside the uniform methods.
FIT_METHOD = "fit"
DEFAULT_METHODS = ("fp32", "bf16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq", "gguf-q8_0", "gguf-q4_k_m", "rtn-w4g128")


@dataclass(frozen=True)
class Settings:
    """What is measured and how; every field lands in the report's protocol section."""

    protocol: PerplexityProtocol = field(default_factory=PerplexityProtocol)
    calibration_fraction: float = 0.25  # first quarter of the text calibrates, the rest is scored
    calibration_samples: int = 32
    calibration_length: int = 512
    prompt_tokens: int = 128  # speed: prompt length for prefill
    new_tokens: int = 32  # speed: tokens decoded after the prompt
    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    measure_speed: bool = True
    runtime: str | None = None  # None: the device's default (recipes/open.py); or transformers, llama.cpp, quantbench
    # Per-device cap for the reference ({0: bytes, "cpu": bytes}, accelerate's max_memory): a model larger
    # than one GPU is split across GPUs and the CPU. None: the whole model on the device.
    max_memory: dict | None = None


@dataclass
class Workload:
    """Token ids prepared once in the parent, so every method and runtime sees the very same ids."""

    source: ModelSource
    text: Text
    settings: Settings
    windows: list[dict]
    calibration: list[list[int]]
    prompt_ids: list[int]
    tokenizer: object = None


def prepare(model: str | None, text: str | None, settings: Settings, trust_remote_code: bool = False) -> Workload:
    from transformers import AutoTokenizer

    source = resolve_model(model, trust_remote_code)
    corpus = load_text(text)
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    if settings.protocol.bos_token_id == -1:
        if tokenizer.bos_token_id is None:
            raise QuantbenchError("--add-bos: this tokenizer has no BOS token; drop the flag")
        settings = replace(settings, protocol=replace(settings.protocol, bos_token_id=tokenizer.bos_token_id))
    if settings.repeats < 1 or settings.new_tokens < 1 or settings.batch < 1:
        raise QuantbenchError("--repeats, --new-tokens and --batch must be at least 1")
    ids = tokenizer(corpus.content, add_special_tokens=False)["input_ids"]
    splits = split_tokens(ids, settings.calibration_fraction)
    windows = make_windows(splits.evaluation, settings.protocol)
    calib = []
    if len(splits.calibration) >= settings.calibration_length:
        calib = calibration_samples(splits.calibration, settings.calibration_samples, settings.calibration_length)
    prompt = splits.evaluation[: settings.prompt_tokens]
    return Workload(source, corpus, settings, [asdict(w) for w in windows], calib, prompt, tokenizer)


def ensure_reference(work: Workload, device: str, env: dict | None = None) -> tuple[Path, float]:
    """The one shared reference for (model, text, protocol): compute once, reuse from the cache."""
    from quantbench.eval.reference import Reference, reference_key, reference_path

    # The reference runs in the checkpoint's own dtype ("auto"); bump the tag when the cache layout changes.
    key = reference_key(work.source.fingerprint, work.text.fingerprint, work.settings.protocol, "auto-dtype/v1")
    path = reference_path(cache_dir(), key)
    if not path.is_file():
        log.info("computing the full-precision reference once (%d windows)", len(work.windows))
        if work.settings.max_memory:  # the cap may name several GPUs: the job sees every GPU
            env, device = None, "cuda" if device.startswith("cuda") else device
        meta = {"model": work.source.name, "model_fingerprint": work.source.fingerprint, "text": work.text.name,
                "text_fingerprint": work.text.fingerprint, "protocol": work.settings.protocol.describe()}
        run_in_fresh_process({"kind": "reference", "model_path": str(work.source.path), "device": device,
                              "windows": work.windows, "reference_path": str(path), "meta": meta,
                              "trust_remote_code": work.source.trust_remote_code,
                              "max_memory": work.settings.max_memory}, env)
    ref = Reference(path)
    ref.check_matches([w["targets"] for w in work.windows])
    nll, n = 0.0, 0
    for k in range(ref.windows):
        lp, t = ref.logprobs(k), ref.targets(k)
        nll += float(-lp.gather(-1, t[:, None])[:, 0].double().sum())
        n += len(t)
    return path, math.exp(nll / n)


def quantize_to(work: Workload, method: str, out: Path, device: str, options: dict | None = None, env: dict | None = None) -> dict:
    """Write `method`'s artifact for the workload's model to `out` (atomically) and return its metadata."""
    from quantbench.recipes import get_recipe

    recipe = get_recipe(method)
    reason = recipe.unavailable_reason(device)
    if reason:
        raise QuantbenchError(f"{method} cannot run on {device} here: {reason}")
    calib = work.calibration if recipe.needs_calibration else []
    if recipe.needs_calibration and not calib:
        raise QuantbenchError(f"{method} needs calibration text: the calibration split is shorter than one sample of "
                              f"{work.settings.calibration_length} tokens; give a longer --text")
    options = {**(options or {}), "calibration_samples": len(calib), "calibration_length": work.settings.calibration_length}
    replaced = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) if Path(out).is_dir() else 0
    with atomic_dir(out) as tmp:
        result = run_in_fresh_process({"kind": "quantize", "method": method, "model_path": str(work.source.path), "replaced_bytes": replaced,
                                       "model_name": work.source.name, "model_fingerprint": work.source.fingerprint,
                                       "out_dir": str(tmp), "device": device, "calibration": calib, "options": options}, env)
        meta = {"method": method, "runtime": recipe.runtime, "format_version": 1, "device": device,
                "source": {"name": work.source.name, "path": str(work.source.path), "fingerprint": work.source.fingerprint},
                "calibration": {"text": work.text.name, "text_fingerprint": work.text.fingerprint, "samples": len(calib),
                                "length": work.settings.calibration_length} if calib else None,
                "versions": versions(), **result}
        meta.update(storage_summary(tmp, work.source, method))
        write_json_atomic(tmp / META_FILE, meta)
    return meta


def storage_summary(artifact: Path, source: ModelSource, method: str | None) -> dict:
    """True stored bytes and bits per weight, read back from the written files."""
    from quantbench.eval.memory import bits_per_weight, group_by_spec, stored_tensor_bytes

    arch = ArchSpec.from_config(source.config())
    stored = stored_tensor_bytes(artifact)
    quantized = _quantized_tensor_names(arch, stored, method)
    return bits_per_weight(stored, arch, quantized)


def _quantized_tensor_names(arch: ArchSpec, stored: dict[str, int], method: str | None) -> set[str]:
    """Which model tensors the method quantizes: from its plan when it has one, else from the bytes."""
    from quantbench.eval.memory import group_by_spec
    from quantbench.recipes import get_recipe

    if method not in (None, "hf", "gguf-file"):
        try:
            recipe = get_recipe(method)
            return {t.name for t in arch.tensors() if recipe.plan_tensor(t, arch).quantized}
        except NotImplementedError:
            pass
    grouped, _ = group_by_spec(stored, arch)
    return {t.name for t in arch.tensors() if t.name in grouped and grouped[t.name] * 8 < 16 * t.numel}


def evaluate_artifact(work: Workload, artifact: Path, device: str, reference: Path, reference_ppl: float,
                      tasks: list[dict] | None = None, env: dict | None = None) -> dict:
    s = work.settings
    speed = {"prompt_ids": work.prompt_ids, "new_tokens": s.new_tokens, "batch": s.batch, "repeats": s.repeats,
             "warmup": s.warmup} if s.measure_speed else None
    from quantbench.recipes.open import default_runtime

    runtime = s.runtime or default_runtime(Path(artifact), device)
    row = run_in_fresh_process({"kind": "evaluate", "artifact": str(artifact), "device": device, "windows": work.windows,
                                "reference_path": str(reference), "speed": speed, "tasks": tasks, "runtime": runtime,
                                "llama_cpp_first": runtime == "llama.cpp" and device.startswith("cuda")}, env)
    meta = read_meta(artifact)
    row["method"] = meta["method"]
    if "weight_bytes" not in meta:
        meta.update(storage_summary(artifact, work.source, meta["method"]))
    for key in ("weight_bytes", "bits_per_weight", "bits_per_weight_quantized", "quantize_seconds", "quantize_peak_bytes"):
        row[key] = meta.get(key)
    row["delta_ppl"] = row["ppl"] - reference_ppl
    row["status"] = "ok"
    return row


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
            out_dir: Path = Path("quantbench-out"), device: str | None = None, settings: Settings = Settings(),
            tasks_file: Path | None = None, memory_budget_bytes: int | None = None, trust_remote_code: bool = False,
            progress: Callable[[str], None] = lambda msg: None, context: int = 4096, devices: list[str] | None = None) -> dict:
    """Quantize with every method, measure each in a fresh process, and return the comparison.

    With `memory_budget_bytes`, every row also gets its runtime memory at `context` (quantbench.fit.budget:
    weights + KV cache + llama.cpp's buffers) and the recommendation picks among the rows that fit;
    the method name "fit" adds quantbench fit's artifact for that budget.

    With several GPUs (`devices`, default: every visible GPU on CUDA) independent methods run at once,
    one fresh process per GPU that sees only its GPU (CUDA_VISIBLE_DEVICES); each method's numbers are
    the ones it gives on one GPU.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from quantbench.device import isolate_gpu, resolve_device, resolve_devices

    device = resolve_device(device)
    gpus = resolve_devices(devices, device)
    names = resolve_methods(methods)
    if FIT_METHOD in names and memory_budget_bytes is None:
        raise QuantbenchError("the method 'fit' needs --memory-budget: it builds the best GGUF for that budget")
    progress("preparing model and text")
    work = prepare(model, text, settings, trust_remote_code)
    tasks = None
    if tasks_file:
        from quantbench.eval.tasks import load_tasks

        tasks = load_tasks(Path(tasks_file), work.tokenizer)
    progress("reference log-probabilities")
    env, inside = isolate_gpu(gpus[0])
    reference, reference_ppl = ensure_reference(work, inside, env)
    started = time.perf_counter()
    free: queue.Queue = queue.Queue()
    for gpu in gpus:
        free.put(gpu)
    done = []

    def run(i: int, method: str) -> dict:
        gpu = free.get()
        try:
            if method == FIT_METHOD:
                row = _fit_row(work, memory_budget_bytes, context, Path(out_dir), device, reference, reference_ppl, tasks,
                               lambda msg: progress(f"[{i}/{len(names)}] fit: {msg}"))
            else:
                row = _compare_one(work, method, f"[{i}/{len(names)}]" + (f" {gpu}" if len(gpus) > 1 else ""), gpu, out_dir,
                                   reference, reference_ppl, tasks, progress)
        finally:
            free.put(gpu)
        done.append(method)
        elapsed = time.perf_counter() - started
        progress(f"{len(done)}/{len(names)} methods done, {elapsed / 60:.1f} min elapsed, "
                 f"about {elapsed / len(done) * (len(names) - len(done)) / 60:.1f} min left")
        return row

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        rows = list(pool.map(run, range(1, len(names) + 1), names))
    wall_seconds = time.perf_counter() - started
    result = {
        "model": {"name": work.source.name, "path": str(work.source.path), "fingerprint": work.source.fingerprint,
                  "params": ArchSpec.from_config(work.source.config()).num_params()},
        "text": {"name": work.text.name, "fingerprint": work.text.fingerprint},
        "protocol": {"perplexity": settings.protocol.describe(), "reference_ppl": reference_ppl,
                     "reference": str(reference), "calibration": {"fraction": settings.calibration_fraction,
                     "samples": len(work.calibration), "length": settings.calibration_length},
                     "speed": {"prompt_tokens": len(work.prompt_ids), "new_tokens": settings.new_tokens,
                               "batch": settings.batch, "repeats": settings.repeats, "warmup": settings.warmup,
                               "measured": settings.measure_speed},
                     "kld": "KL(P_ref || Q) per scored token, natural log"},
        "rows": rows,
        "devices": gpus,
        "methods_wall_seconds": wall_seconds,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if memory_budget_bytes is not None:
        result["protocol"]["runtime_memory"] = _add_runtime_memory(work, rows, memory_budget_bytes, context, progress)
    from quantbench.report.recommend import recommend

    result["recommendation"] = recommend(rows, memory_budget_bytes)
    return result


def _fit_row(work: Workload, budget: int, context: int, out_dir: Path, device: str, reference: Path, reference_ppl: float,
             tasks, progress: Callable[[str], None]) -> dict:
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
        return {"method": FIT_METHOD, "runtime": "llama.cpp", "device": device, "status": f"failed: {exc}"}
    row["kv_cache_type"] = report["kv_cache_type"]
    row["predicted_kld"] = report["predicted_kld"]
    return row


def _add_runtime_memory(work: Workload, rows: list[dict], budget: int, context: int, progress) -> dict:
    """Every finished row's memory under one rule (quantbench.fit.budget): weights + KV cache at `context`
    + llama.cpp's compute and output buffers for this model (measured once in llama.cpp, used for every
    row: transformers does not report its own). KV cache: a fitted file's recorded type, F16 for other
    llama.cpp rows, the compute dtype for transformers rows."""
    from quantbench.fit.budget import RuntimeSetting
    from quantbench.fit.pipeline import FitConfig, prepare_fit
    from quantbench.plan.memory import kv_cache_bytes as plan_kv_cache_bytes

    progress(f"runtime memory of every row at context {context}")
    setup = prepare_fit(work, FitConfig(budget_bytes=budget, context=context))
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}
    for row in rows:
        if row.get("status") != "ok" or row.get("weight_bytes") is None:
            continue
        if row.get("runtime") == "llama.cpp":
            kv_type = row.get("kv_cache_type", "F16")
            kv_bytes, buffers = setup.runtime[kv_type]
        else:
            kv_type = row.get("dtype", "bfloat16")
            kv_bytes = plan_kv_cache_bytes(setup.arch, context, 1, dtype_bytes.get(kv_type, 2), row.get("runtime", "transformers"))
            buffers = setup.runtime["F16"][1]
        row["runtime_memory"] = {"weights": row["weight_bytes"], "kv_cache": kv_bytes, "kv_cache_type": kv_type,
                                 "buffers": buffers, "total": row["weight_bytes"] + kv_bytes + buffers}
    return {"context": context, "rule": "weights + KV cache at the context (padded to 256 cells) + llama.cpp's compute "
            "and output buffers for this model (n_ubatch 512, flash attention on, CPU), the same buffers for every row",
            "llama_cpp_flags_f16": RuntimeSetting(context).llama_cpp_flags()}


def _compare_one(work: Workload, method: str, tag: str, gpu: str, out_dir: Path, reference: Path, reference_ppl: float,
                 tasks, progress: Callable[[str], None]) -> dict:
    """Quantize (unless a matching artifact exists) and measure one method, in fresh processes that see only `gpu`."""
    from quantbench.device import isolate_gpu
    from quantbench.recipes import get_recipe

    env, device = isolate_gpu(gpu)
    recipe = get_recipe(method)
    reason = recipe.unavailable_reason(device)
    if reason:
        progress(f"{tag} {method}: UNAVAILABLE on {device}: {reason}")
        return {"method": method, "runtime": recipe.runtime, "device": device, "status": f"unavailable: {reason}"}
    artifact = Path(out_dir) / "artifacts" / method
    t0 = time.perf_counter()
    try:
        if not _artifact_matches(artifact, work, method, device):
            progress(f"{tag} {method}: quantizing")
            quantize_to(work, method, artifact, device, env=env)
        progress(f"{tag} {method}: measuring")
        row = evaluate_artifact(work, artifact, device, reference, reference_ppl, tasks, env)
    except QuantbenchError as exc:
        progress(f"{tag} {method}: FAILED: {exc}")
        return {"method": method, "runtime": recipe.runtime, "device": device, "status": f"failed: {exc}"}
    row["gpu"] = gpu
    progress(f"{tag} {method}: done in {time.perf_counter() - t0:.0f}s (ppl {row['ppl']:.3f}, kld {row['kld_mean']:.4f})")
    return row


def _artifact_matches(artifact: Path, work: Workload, method: str, device: str) -> bool:
    """Resume: reuse an artifact written earlier for the same model, method and calibration."""
    meta_path = artifact / META_FILE
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    calib = meta.get("calibration")
    same_calibration = calib is None or (calib.get("text_fingerprint") == work.text.fingerprint
                                         and calib.get("samples") == len(work.calibration)
                                         and calib.get("length") == work.settings.calibration_length)
    return (meta.get("method") == method and meta.get("source", {}).get("fingerprint") == work.source.fingerprint
            and meta.get("device") == device and same_calibration)


def quantize(model: str | None, method: str, out: Path, text: str | None = None, device: str | None = None,
             settings: Settings = Settings(), trust_remote_code: bool = False) -> dict:
    from quantbench.device import resolve_device

    device = resolve_device(device)
    work = prepare(model, text, settings, trust_remote_code)
    return quantize_to(work, method, Path(out), device)


def evaluate(artifact: Path, reference_model: str | None = None, text: str | None = None, device: str | None = None,
             settings: Settings = Settings(), tasks_file: Path | None = None) -> dict:
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
        from quantbench.sources.model import DEFAULT_MODEL

        reference_model = name if name == DEFAULT_MODEL or Path(name).exists() or not (path and Path(path).is_dir()) else path
    work = prepare(reference_model, text, settings)
    tasks = None
    if tasks_file:
        from quantbench.eval.tasks import load_tasks

        tasks = load_tasks(Path(tasks_file), work.tokenizer)
    reference, reference_ppl = ensure_reference(work, device)
    row = evaluate_artifact(work, Path(artifact), device, reference, reference_ppl, tasks)
    row["reference_ppl"] = reference_ppl
    row["protocol"] = settings.protocol.describe()
    return row


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


def fit(model: str | None, budget_bytes: int, out: Path, context: int = 4096, text: str | None = None,
        device: str | None = None, settings: Settings = Settings(), exclude_types: tuple[str, ...] = (),
        kv_cache_types: tuple[str, ...] | None = None, sensitivity=None, trust_remote_code: bool = False,
        progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The best GGUF under `budget_bytes` of llama.cpp memory at `context`, chosen tensor by tensor (quantbench fit)."""
    from quantbench.fit.budget import KV_CACHE_TYPES
    from quantbench.fit.pipeline import FitConfig, fit_model
    from quantbench.fit.sensitivity import SensitivitySettings
    from quantbench.device import resolve_device

    device = resolve_device(device)
    config = FitConfig(budget_bytes=budget_bytes, context=context, kv_cache_types=tuple(kv_cache_types or KV_CACHE_TYPES),
                       exclude_types=tuple(exclude_types), sensitivity=sensitivity or SensitivitySettings())
    work = prepare(model, text, settings, trust_remote_code)
    return fit_model(work, config, Path(out), device, progress)

"""Synthetic full-scale bench: speed and memory of a model from its config alone, with random weights.

"How fast will Llama-3.1-8B in nf4 run on my GPU?" without downloading 16 GB: the architecture is
built from its config directly on the device with random weights (transformers' own init), then each
method is applied in place by its recipe (Recipe.bench_apply: bitsandbytes turns every decoder linear
into the bnb.nn.Linear4bit / Linear8bitLt transformers' integration creates, quantized on the device;
lm_head and embeddings stay in the load dtype). Measured per method:
- stored bytes (the state dict save_pretrained would write) beside plan's prediction for it;
- resident bytes, peak device memory while building and while running, transformers' own footprint;
- prefill and decode tokens/s (quantbench.eval.speed.measure_speed, median of repeats after warm-up);
- the memory-bandwidth ceiling of decode: bandwidth measured in the same run (device-to-device copy,
  bytes read + written / time) over the bytes one decode step reads (every weight except the input
  embedding table, plus the KV cache at the mean context), and the fraction of it reached.
Quality columns are n/a: random weights carry no quality; that needs the trained checkpoint.
Its tables (text and Markdown) are in report/bench_table.py.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from quantbench.arch import EMBED, ArchSpec
from quantbench.artifact import versions
from quantbench.device import allocated_bytes, describe_device, peak_cuda_bytes, reset_peak
from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("bf16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4")
QUALITY_NA = "n/a: random weights carry no quality; run `quantbench compare` on the trained checkpoint"


@dataclass(frozen=True)
class BenchSettings:
    methods: tuple[str, ...] = DEFAULT_METHODS
    prompt_tokens: int = 512
    new_tokens: int = 64
    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    device: str | None = None  # None: cuda when present
    seed: int = 0
    bandwidth_bytes: int | None = None  # copy size; None: 2 GiB on CUDA, 256 MiB on CPU
    runtime: str | None = None  # None: quantbench's own runtime on CUDA, transformers on a CPU

    def __post_init__(self):
        if self.prompt_tokens < 1 or self.new_tokens < 1 or self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise QuantbenchError("--prompt-tokens, --new-tokens, --batch and --repeats must be at least 1")
        if not self.methods:
            raise QuantbenchError("no methods to bench")


# ---------------------------------------------------------------------------------------------------
# Measurements that do not depend on the model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_bandwidth(device: str, nbytes: int | None = None, repeats: int = 10) -> dict:
    """Device-to-device copy of `nbytes`: (bytes read + bytes written) / time, median of `repeats`."""
    cuda = device.startswith("cuda")
    if nbytes is None:
        nbytes = 2 * 2**30 if cuda else 2**28  # 2 GiB: a copy takes ~1 ms on an H100, far above timer noise
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch page faults on CPU, lazy init on CUDA
    _sync(device)
    seconds = []
    for _ in range(repeats):
        if cuda:  # CUDA events time the copy on the device itself
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - t0)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    median = statistics.median(seconds)
    return {
        "bytes_per_s": 2 * nbytes / median,
        "bytes_per_s_max": 2 * nbytes / min(seconds),
        "copy_bytes": nbytes,
        "repeats": repeats,
        "method": "device-to-device copy_, bytes read + written over the median time" + (" (CUDA events)" if cuda else ""),
    }


def stored_bytes(model) -> int:
    """Bytes of the state dict save_pretrained would write (bitsandbytes adds its quant state here);
    tied tensors once. On a CPU, call before the first forward (bitsandbytes repacks 4-bit layers then)."""
    seen: dict[tuple[int, int], int] = {}
    for tensor in model.state_dict().values():
        seen[(tensor.data_ptr(), tensor.nbytes)] = tensor.nbytes
    return sum(seen.values())


def resident_bytes(model) -> int:
    """Unique tensor storage the model holds: parameters, buffers and bitsandbytes' quant state."""
    seen: dict[int, int] = {}

    def add(t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel():
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.nbytes)

    for module in model.modules():
        for p in module.parameters(recurse=False):
            add(p)
        for b in module.buffers(recurse=False):
            add(b)
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
            if state.nested:
                add(state.state2.absmax)
                add(state.state2.code)
                add(state.offset)
        add(getattr(weight, "SCB", None))
        add(getattr(getattr(module, "state", None), "SCB", None))  # int8: moved here at the first forward
        add(getattr(getattr(module, "state", None), "SCB", None))  # int8 moves SCB here at the first forward
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------------
# Building the model


def build_random_model(config: dict, device: str, dtype: torch.dtype, seed: int):
    """The architecture of `config` with transformers' random init, allocated directly on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("model_type", "dtype", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# The bench


def run_bench(model_spec: str | None, settings: BenchSettings = BenchSettings(), progress=None) -> dict:
    from quantbench.eval.speed import measure_speed
    from quantbench.device import resolve_device
    from quantbench.recipes import all_recipes, get_recipe
    from quantbench.runtimes.hf import HFRuntime

    device = resolve_device(settings.device)
    runtime_name = settings.runtime or ("quantbench" if device.startswith("cuda") else "transformers")
    if runtime_name == "llama.cpp":
        raise QuantbenchError("bench on llama.cpp: run benchmarks/llamacpp_cuda_bench.py (random weights written as GGUF by "
                              "quantbench's writer, quantized by llama.cpp, all layers on the GPU)")
    if runtime_name not in ("quantbench", "transformers"):
        raise QuantbenchError(f"unknown runtime '{runtime_name}'; choose transformers, quantbench or llama.cpp")
    recipes = [get_recipe(m) for m in settings.methods]
    if runtime_name == "quantbench":
        return _run_fast_bench(model_spec, settings, device, recipes, progress)
    for recipe in recipes:
        if not recipe.in_place:
            in_place = sorted({r.family for r in all_recipes() if r.in_place})
            raise QuantbenchError(
                f"{recipe.name}: the synthetic bench applies only {' and '.join(in_place)} methods in place to random "
                f"weights; {recipe.family} methods need calibration or their own file and runtime: measure them with "
                "`quantbench compare` on a checkpoint"
            )
    say = progress or (lambda message: log.info(message))
    model_config, arch, planned, bandwidth, prompt_ids = _prepare(model_spec, settings, device, recipes, say)
    embed = next(t for t in arch.tensors() if t.role == EMBED)

    rows = []
    for recipe in recipes:
        say(f"{recipe.name}: building {model_config.name} with random weights on {device}")
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        reset_peak(device)
        base = allocated_bytes(device)
        t0 = time.perf_counter()
        model = build_random_model(model_config.config, device, recipe.compute_dtype(device), settings.seed)
        model = recipe.bench_apply(model, arch, device)
        _sync(device)
        build_seconds = time.perf_counter() - t0
        build_peak = peak_cuda_bytes(device)
        stored = stored_bytes(model)
        runtime = HFRuntime(model, device)
        footprint = runtime.reported_footprint_bytes()
        reset_peak(device)
        say(f"{recipe.name}: prefill {settings.prompt_tokens} + decode {settings.new_tokens} tokens, batch {settings.batch}")
        speed = measure_speed(runtime, prompt_ids, settings.new_tokens, settings.batch, settings.repeats, settings.warmup)
        inference_peak = peak_cuda_bytes(device)
        resident = resident_bytes(model)
        # One decode step reads every resident weight once, except the input embedding table (a lookup
        # of `batch` rows) unless it doubles as lm_head; and the KV cache at the mean context.
        weights_read = resident - (0 if arch.tie_word_embeddings else embed.numel * model.get_input_embeddings().weight.element_size())
        kv_per_token = planned[recipe.name]["kv_cache_bytes"] / (settings.prompt_tokens + settings.new_tokens)  # planned at that context
        kv_read = kv_per_token * (settings.prompt_tokens + settings.new_tokens / 2)
        bytes_per_step = weights_read + kv_read
        ceiling = settings.batch * bandwidth["bytes_per_s"] / bytes_per_step
        plan_row = planned[recipe.name]
        rows.append({
            "method": recipe.name,
            "stored_bytes": stored,
            "planned_weight_bytes": plan_row["weight_bytes"],
            "plan_error": (plan_row["weight_bytes"] - stored) / stored,
            "resident_bytes": resident,
            "planned_resident_bytes": plan_row["resident_weight_bytes"],
            "reported_footprint_bytes": footprint,
            "build_seconds": build_seconds,
            "build_peak_bytes": build_peak,
            "inference_peak_bytes": inference_peak,
            "memory_after_build_bytes": allocated_bytes(device) - base,
            **speed,
            "bytes_read_per_decode_step": int(bytes_per_step),
            "ceiling_decode_tok_s": ceiling,
            "fraction_of_ceiling": speed["decode_tok_s"] / ceiling,
            "ppl": None,
            "kld": None,
            "quality": QUALITY_NA,
        })
        runtime.close()
        del runtime, model
    return _bench_record(model_config, arch, device, settings, bandwidth, rows,
                         runtime="transformers eager forward, greedy, DynamicCache")


def _bench_record(model_config, arch, device: str, settings: BenchSettings, bandwidth: dict, rows: list[dict],
                  runtime: str, notes: tuple[str, ...] = ()) -> dict:
    """What `quantbench bench` returns, whichever runtime measured the rows."""
    return {
        "kind": "synthetic bench (random weights)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_config.name, "source": model_config.source, "hub_id": model_config.hub_id,
                  "model_type": arch.model_type, "params": arch.num_params()},
        "device": describe_device(device),
        "host": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "versions": {**versions(), "cuda": torch.version.cuda},
        "settings": {"prompt_tokens": settings.prompt_tokens, "new_tokens": settings.new_tokens, "batch": settings.batch,
                     "repeats": settings.repeats, "warmup": settings.warmup, "seed": settings.seed, "runtime": runtime},
        "bandwidth": bandwidth,
        "methods": rows,
        "notes": [QUALITY_NA,
                  "ceiling = batch x bandwidth / bytes read per decode step (weights once + KV cache at the mean context)",
                  *notes],
    }


def _prepare(model_spec: str | None, settings: BenchSettings, device: str, recipes, say):
    """What both runtimes' benches start from: every method runnable here (else one clear error), the
    config, the plan's rows, the bandwidth measured now and the random prompt."""
    from quantbench.plan import load_model_config, plan

    for recipe in recipes:
        reason = recipe.unavailable_reason(device)
        if reason:
            raise QuantbenchError(f"{recipe.name} cannot run on {device} here: {reason}")
    model_config = load_model_config(model_spec)
    arch = ArchSpec.from_config(model_config.config)
    context = settings.prompt_tokens + settings.new_tokens
    planned = {r["method"]: r for r in plan(model_spec, context=context, batch=settings.batch, device_memory_bytes=0,
                                            methods=list(settings.methods), device="cpu" if device == "cpu" else "cuda")["methods"]}
    say(f"measuring memory bandwidth on {describe_device(device)}")
    bandwidth = measure_bandwidth(device, settings.bandwidth_bytes)
    generator = torch.Generator().manual_seed(settings.seed)
    prompt_ids = torch.randint(0, arch.vocab_size, (settings.prompt_tokens,), generator=generator).tolist()
    return model_config, arch, planned, bandwidth, prompt_ids


def _run_fast_bench(model_spec: str, settings: BenchSettings, device: str, recipes, progress) -> dict:
    """The same bench through quantbench's own runtime (runtimes/fast): random weights packed by each
    recipe's format code, loaded by the runtime's artifact reader (quantbench/fast_bench.py)."""
    from quantbench.fast_bench import fast_rows

    if not device.startswith("cuda"):
        raise QuantbenchError("the quantbench runtime is measured on CUDA; use --runtime transformers on a CPU")
    unsupported = [r.name for r in recipes if r.family in ("gguf",)]
    if unsupported:
        raise QuantbenchError(f"{', '.join(unsupported)}: GGUF runs on llama.cpp; bench it with benchmarks/llamacpp_cuda_bench.py")
    say = progress or (lambda message: log.info(message))
    model_config, arch, planned, bandwidth, prompt_ids = _prepare(model_spec, settings, device, recipes, say)
    rows = []
    for recipe in recipes:
        row = fast_rows(model_config.config, recipe, device, bandwidth["bytes_per_s"], prompt_ids, settings.new_tokens,
                        (settings.batch,), settings.repeats, settings.warmup, settings.seed, progress=say)[0]
        if row.get("status") != "ok":
            raise QuantbenchError(f"{recipe.name} on the quantbench runtime: {row.get('status')}")
        plan_row = planned[recipe.name]
        row.update(planned_weight_bytes=plan_row["weight_bytes"],
                   plan_error=(plan_row["weight_bytes"] - row["stored_bytes"]) / row["stored_bytes"],
                   resident_bytes=row["resident_weight_bytes"], planned_resident_bytes=plan_row["resident_weight_bytes"],
                   reported_footprint_bytes=row["resident_weight_bytes"], inference_peak_bytes=row["peak_bytes"],
                   ttft_s=row["warm_ttft_s"], ppl=None, kld=None, quality=QUALITY_NA)
        rows.append(row)
    return _bench_record(model_config, arch, device, settings, bandwidth, rows,
                         runtime="quantbench runtime (own decoder, packed weights, static KV cache, decode step as one CUDA graph)",
                         notes=("each row's `kernels` names the kernel per kind of linear; `numerics` where it differs from the artifact's",))

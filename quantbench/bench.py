"""Synthetic full-scale bench: speed and memory of a model from its config alone, with random weights.

"How fast will Llama-3.1-8B in nf4 run on my GPU?" without downloading 16 GB: the architecture is
built from its config directly on the device with random weights (transformers' own init), then each
method is applied in place exactly as its recipe's loader would (bitsandbytes: every decoder linear
becomes the bnb.nn.Linear4bit / Linear8bitLt transformers' integration creates, quantized on the
device; lm_head and embeddings stay in the load dtype). Measured per method:
- stored bytes (the state dict save_pretrained would write) beside plan's prediction for it;
- resident bytes, peak device memory while building and while running, transformers' own footprint;
- prefill and decode tokens/s (quantbench.eval.speed.measure_speed, median of repeats after warm-up);
- the memory-bandwidth ceiling of decode: bandwidth measured in the same run (device-to-device copy,
  bytes read + written / time) over the bytes one decode step reads (every weight except the input
  embedding table, plus the KV cache at the mean context), and the fraction of it reached.
Quality columns are n/a: random weights carry no quality; that needs the trained checkpoint.
"""

from __future__ import annotations

import datetime
import gc
import logging
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from quantbench.arch import EMBED, LINEAR, ArchSpec
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
    bandwidth_bytes: int | None = None  # copy size; None: 1 GiB on CUDA, 256 MiB on CPU

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


def _memory_now(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: str) -> int | None:
    """Peak allocated device memory since the last reset (CUDA); None on CPU (no per-phase peak)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return None


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


def _float_method(model, recipe, arch: ArchSpec, device: str):
    return model  # built in the recipe's dtype already


def _bnb_method(model, recipe, arch: ArchSpec, device: str):
    """Replace every decoder linear with the bitsandbytes module transformers' integration creates,
    quantized on the device; the bf16 weight is freed as each one is replaced."""
    import bitsandbytes as bnb

    s = recipe.settings
    compute_dtype = model.dtype
    for tensor in arch.tensors():
        if tensor.role != LINEAR:
            continue
        path = tensor.name.removesuffix(".weight")
        parent_path, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        old = getattr(parent, child_name)
        bias = old.bias
        if s.bits == 8:
            new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=bias is not None,
                                      has_fp16_weights=False, threshold=s.int8_threshold, device="meta")
            new.weight = bnb.nn.Int8Params(old.weight.data, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=bias is not None, compute_dtype=compute_dtype,
                                    compress_statistics=s.double_quant, quant_type=s.quant_type,
                                    quant_storage=torch.uint8, device="meta")
            new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, compress_statistics=s.double_quant,
                                           quant_type=s.quant_type, quant_storage=torch.uint8, module=new)
        new.weight._quantize(device)  # bitsandbytes' own quantization, on the device (what .to(device) does)
        if bias is not None:
            new.bias = torch.nn.Parameter(bias.data, requires_grad=False)
        new.eval()
        setattr(parent, child_name, new)
        del old
    return model


# Which families the bench can apply in place to a random model, and how. Others need calibration
# data or write a file format another runtime loads: `quantbench compare` measures those.
METHOD_BUILDERS = {"float": _float_method, "bitsandbytes": _bnb_method}


def _load_dtype(recipe, device: str) -> torch.dtype:
    from quantbench.device import best_half_dtype

    dtype = getattr(recipe, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else best_half_dtype(device)


# ---------------------------------------------------------------------------------------------------
# The bench


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for package in ("transformers", "bitsandbytes", "quantbench"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def run_bench(model_spec: str, settings: BenchSettings = BenchSettings(), progress=None) -> dict:
    from quantbench.eval.speed import measure_speed
    from quantbench.plan import load_model_config, plan
    from quantbench.recipes import get_recipe
    from quantbench.device import describe_device, resolve_device
    from quantbench.runtimes.hf import HFRuntime

    device = resolve_device(settings.device)
    recipes = [get_recipe(m) for m in settings.methods]
    for recipe in recipes:
        if recipe.family not in METHOD_BUILDERS:
            raise QuantbenchError(
                f"{recipe.name}: the synthetic bench applies only {' and '.join(METHOD_BUILDERS)} methods in place to random "
                f"weights; {recipe.family} methods need calibration or their own file and runtime: measure them with "
                "`quantbench compare` on a checkpoint"
            )
        reason = recipe.unavailable_reason(device)
        if reason:
            raise QuantbenchError(f"{recipe.name} cannot run on {device} here: {reason}")
    model_config = load_model_config(model_spec)
    arch = ArchSpec.from_config(model_config.config)
    context = settings.prompt_tokens + settings.new_tokens
    planned = {
        r["method"]: r
        for r in plan(model_spec, context=context, batch=settings.batch, device_memory_bytes=0,
                      methods=list(settings.methods), device="cpu" if device == "cpu" else "cuda")["methods"]
    }
    say = progress or (lambda message: log.info(message))
    say(f"measuring memory bandwidth on {describe_device(device)}")
    bandwidth = measure_bandwidth(device, settings.bandwidth_bytes)
    generator = torch.Generator().manual_seed(settings.seed)
    prompt_ids = torch.randint(0, arch.vocab_size, (settings.prompt_tokens,), generator=generator).tolist()
    embed = next(t for t in arch.tensors() if t.role == EMBED)

    rows = []
    for recipe in recipes:
        say(f"{recipe.name}: building {model_config.name} with random weights on {device}")
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        _reset_peak(device)
        base = _memory_now(device)
        t0 = time.perf_counter()
        model = build_random_model(model_config.config, device, _load_dtype(recipe, device), settings.seed)
        model = METHOD_BUILDERS[recipe.family](model, recipe, arch, device)
        _sync(device)
        build_seconds = time.perf_counter() - t0
        build_peak = _peak(device)
        stored = stored_bytes(model)
        runtime = HFRuntime(model, device)
        footprint = runtime.reported_footprint_bytes()
        _reset_peak(device)
        say(f"{recipe.name}: prefill {settings.prompt_tokens} + decode {settings.new_tokens} tokens, batch {settings.batch}")
        speed = measure_speed(runtime, prompt_ids, settings.new_tokens, settings.batch, settings.repeats, settings.warmup)
        inference_peak = _peak(device)
        resident = resident_bytes(model)
        # One decode step reads every resident weight once, except the input embedding table (a lookup
        # of `batch` rows) unless it doubles as lm_head; and the KV cache at the mean context.
        weights_read = resident - (0 if arch.tie_word_embeddings else embed.numel * model.get_input_embeddings().weight.element_size())
        kv_per_token = planned[recipe.name]["kv_cache_bytes"] / context
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
            "memory_after_build_bytes": _memory_now(device) - base,
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
    return {
        "kind": "synthetic bench (random weights)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_config.name, "source": model_config.source, "hub_id": model_config.hub_id,
                  "model_type": arch.model_type, "params": arch.num_params()},
        "device": describe_device(device),
        "host": {"cpu": platform.processor() or platform.machine(), "cpu_count": _cpu_count()},
        "versions": versions(),
        "settings": {"prompt_tokens": settings.prompt_tokens, "new_tokens": settings.new_tokens, "batch": settings.batch,
                     "repeats": settings.repeats, "warmup": settings.warmup, "seed": settings.seed,
                     "runtime": "transformers eager forward, greedy, DynamicCache"},
        "bandwidth": bandwidth,
        "methods": rows,
        "notes": [QUALITY_NA,
                  "ceiling = batch x bandwidth / bytes read per decode step (weights once + KV cache at the mean context)"],
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def _size(n) -> str:
    from quantbench.plan import format_bytes

    return format_bytes(n)


def to_markdown(result: dict) -> str:
    s = result["settings"]
    v = result["versions"]
    lines = [
        f"### {result['model']['name']} ({result['model']['params'] / 1e9:.2f} B params, random weights) on {result['device']}",
        "",
        f"{result['date']}; torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, "
        f"bitsandbytes {v['bitsandbytes']}; {s['runtime']}; prompt {s['prompt_tokens']} tokens, "
        f"{s['new_tokens']} new tokens, batch {s['batch']}, median of {s['repeats']} after {s['warmup']} warm-up.",
        f"Bandwidth (device-to-device copy, read + write): {result['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s.",
        "",
        "| method | stored | plan | transformers footprint | peak (run) | prefill tok/s | decode tok/s "
        "| ceiling tok/s | of ceiling | PPL / KLD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"]:
        lines.append(
            f"| {r['method']} | {_size(r['stored_bytes'])} | {_size(r['planned_weight_bytes'])} | {_size(r['reported_footprint_bytes'])} "
            f"| {_size(r['inference_peak_bytes'])} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:.1f} "
            f"({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f}) | {r['ceiling_decode_tok_s']:,.0f} "
            f"| {100 * r['fraction_of_ceiling']:.1f}% | n/a |"
        )
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines)


def to_text(result: dict) -> str:
    lines = [
        f"{result['model']['name']} with random weights on {result['device']}; bandwidth "
        f"{result['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s (copy, read + write)",
        f"{'method':18} {'stored':>10} {'plan':>10} {'footprint':>10} {'peak':>10} {'prefill t/s':>11} "
        f"{'decode t/s':>10} {'ceiling t/s':>11} {'of ceil.':>8}  quality",
    ]
    for r in result["methods"]:
        lines.append(
            f"{r['method']:18} {_size(r['stored_bytes']):>10} {_size(r['planned_weight_bytes']):>10} {_size(r['reported_footprint_bytes']):>10} "
            f"{_size(r['inference_peak_bytes']):>10} {r['prefill_tok_s']:11.1f} {r['decode_tok_s']:10.2f} "
            f"{r['ceiling_decode_tok_s']:11.1f} {100 * r['fraction_of_ceiling']:7.2f}%  n/a"
        )
    lines.append(f"quality: {QUALITY_NA}")
    return "\n".join(lines)

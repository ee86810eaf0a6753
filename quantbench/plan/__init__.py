"""`quantbench plan`: exact memory of every method from a model's config alone, before any download.

For each registered recipe, every tensor of the architecture (quantbench.arch) goes through the
recipe's own `plan_tensor`, which knows the method's real storage rules (which tensors it
quantizes, block sizes, scales, nested state, GGUF mixtures and fallbacks). Summed, that is the
artifact's stored tensor bytes; tests hold it to the bytes of real artifacts within 0.5 %.

Beside the weights:
- KV cache: K and V of every layer for `context` tokens and `batch` sequences, in the runtime's
  cache dtype and layout (transformers' DynamicCache keeps only `sliding_window - 1` tokens in
  sliding-window layers; llama.cpp allocates F16 K/V for its padded context in every layer).
- Activations: an estimate of one prefill forward over the whole context (see activation_bytes).
- The verdict: weights as resident on the target device + KV cache + activations, against the
  device memory (default: free CUDA memory when the target is a GPU, else available RAM).
- The peak while quantizing, from the recipe's strategy (quantbench.recipes.strategy): streaming from
  the checkpoint per tensor or per layer (every term from quantbench.streaming.budget), or a
  transformers load-and-save; and the disk the job needs.

The target device matters: bitsandbytes repacks 4-bit weights with bf16 absmax on CPUs with
AVX512-BF16, and unquantized tensors load in bf16 or fp32 depending on the hardware.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from quantbench.arch import EMBED, ArchSpec, TensorSpec
from quantbench.device import cuda_available, free_memory
from quantbench.errors import QuantbenchError
from quantbench.formats.safetensors import dtype_bytes
from quantbench.plan.memory import activation_bytes, kv_cache_bytes
from quantbench.plan.model_config import ModelConfig, complete_config, load_model_config
from quantbench.recipes.strategy import PeakInputs
from quantbench.settings import DEFAULTS

__all__ = ["ModelConfig", "activation_bytes", "complete_config", "kv_cache_bytes", "load_model_config", "plan"]

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclass
class _MethodPlan:
    stored: dict[str, int] = field(default_factory=dict)
    resident: dict[str, int] = field(default_factory=dict)
    storage: dict[str, list[int]] = field(default_factory=dict)  # storage label -> [tensors, bytes]
    quantized_numel: int = 0
    quantized_bytes: int = 0
    quantized_tensors: int = 0


def _plan_tensors(recipe, arch: ArchSpec, tensors: list[TensorSpec], device: str) -> _MethodPlan:
    out = _MethodPlan()
    for t in tensors:
        p = recipe.plan_tensor(t, arch, device, resident=False)
        out.stored[t.name] = p.stored_bytes
        out.resident[t.name] = recipe.plan_tensor(t, arch, device, resident=True).stored_bytes
        entry = out.storage.setdefault(p.storage, [0, 0])
        entry[0] += 1
        entry[1] += p.stored_bytes
        if p.quantized:
            out.quantized_numel += t.numel
            out.quantized_bytes += p.stored_bytes
            out.quantized_tensors += 1
    return out


def plan(
    model_spec: str | None,
    context: int = DEFAULT_CONTEXT,
    batch: int = 1,
    device_memory_bytes: int | None = None,
    methods: list[str] | None = None,
    device: str | None = None,
    calibration_samples: int = DEFAULTS.calibration_samples,
    calibration_length: int = DEFAULTS.calibration_length,
) -> dict:
    """Exact bytes of every method for `model_spec` on `device` ("cuda" or "cpu"; default: cuda when
    present). The layout is the one that device produces (see BnbRecipe.plan_tensor)."""
    from quantbench.recipes import all_recipes, get_recipe

    if context < 1 or batch < 1:
        raise QuantbenchError("--context and --batch must be at least 1")
    device = device or ("cuda" if cuda_available() else "cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise QuantbenchError(f"unknown device '{device}'; plan for cpu or cuda")
    model = load_model_config(model_spec)
    arch = ArchSpec.from_config(model.config)
    tensors = arch.tensors()
    params = sum(t.numel for t in tensors)
    source_bytes = dtype_bytes(model.config.get("dtype") or "float32")
    if device_memory_bytes is None:
        memory, memory_source = free_memory(device)
    else:
        memory, memory_source = int(device_memory_bytes), "given (--device-memory)"

    recipes = all_recipes() if methods is None else [get_recipe(m) for m in methods]
    rows = []
    no_plan = []  # recipes whose plan_tensor is not written yet
    unsupported = []  # recipes that refuse this model
    checkable = device == "cpu" or cuda_available()  # a GPU that is not here cannot be asked
    for recipe in recipes:
        reason = recipe.unavailable_reason(device) if checkable else None
        row = {
            "method": recipe.name,
            "family": recipe.family,
            "runtime": recipe.runtime,
            "description": recipe.description,
            "available": (reason is None) if checkable else None,
            "unavailable_reason": reason,
        }
        try:
            mp = _plan_tensors(recipe, arch, tensors, device)
        except NotImplementedError as exc:
            message = f"no plan yet: {exc}"
            log.warning("%s: %s", recipe.name, message)
            no_plan.append(recipe.name)
            row.update(planned=False, no_plan_reason=message, weight_bytes=None, total_bytes=None, fits=None)
            rows.append(row)
            continue
        except QuantbenchError as exc:  # the method cannot handle this model (e.g. an architecture it lacks)
            message = f"not for this model: {exc}"
            unsupported.append(recipe.name)
            row.update(planned=False, no_plan_reason=message, weight_bytes=None, total_bytes=None, fits=None)
            rows.append(row)
            continue
        weight_bytes = sum(mp.stored.values())
        resident_bytes = sum(mp.resident.values())
        compute_bytes = recipe.compute_dtype(device).itemsize
        kv = kv_cache_bytes(arch, context, batch, compute_bytes, recipe.runtime)
        act = activation_bytes(arch, context, batch, compute_bytes)
        total = resident_bytes + kv + act
        strategy = recipe.strategy
        peak = strategy.peak(
            PeakInputs(arch, mp.stored, source_bytes, compute_bytes, device, calibration_samples, calibration_length)
        )
        row.update(
            planned=True,
            weight_bytes=weight_bytes,
            resident_weight_bytes=resident_bytes,
            bits_per_weight=8 * weight_bytes / params,
            bits_per_weight_quantized=8 * mp.quantized_bytes / mp.quantized_numel if mp.quantized_numel else None,
            quantized_params=mp.quantized_numel,
            quantized_tensors=mp.quantized_tensors,
            unquantized_tensors=len(tensors) - mp.quantized_tensors,
            storage={label: {"tensors": n, "bytes": b} for label, (n, b) in mp.storage.items()},
            kv_cache_bytes=kv,
            kv_bytes_per_value=compute_bytes,
            activation_bytes=act,
            total_bytes=total,
            fits=total <= memory,
            headroom_bytes=memory - total,
            quantize_strategy=strategy.name,
            quantize_runs_on=peak["runs_on"],
            quantize_peak_bytes=peak["peak_bytes"],
            quantize_host_peak_bytes=peak["host_peak_bytes"],
            quantize_disk_bytes=peak["disk_bytes"],
            quantize_fits=peak["peak_bytes"] <= memory if peak["runs_on"] != "host" or device == "cpu" else None,
            quantize=peak,
        )
        rows.append(row)

    embed = next(t for t in tensors if t.role == EMBED)
    return {
        "model": {
            "name": model.name,
            "source": model.source,
            "hub_id": model.hub_id,
            "model_type": arch.model_type,
            "params": params,
            "layers": arch.num_layers,
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "heads": arch.num_heads,
            "kv_heads": arch.num_kv_heads,
            "head_dim": arch.head_dim,
            "vocab_size": arch.vocab_size,
            "tied_embeddings": arch.tie_word_embeddings,
            "embedding_params": embed.numel,
            "source_dtype_bytes": source_bytes,
            "sliding_window": model.config.get("sliding_window"),
        },
        "context": context,
        "batch": batch,
        "device": device,
        "device_memory_bytes": memory,
        "device_memory_source": memory_source,
        "methods": rows,
        "no_plan": no_plan,
        "unsupported": unsupported,
        "notes": list(model.notes)
        + ([] if checkable else ["this machine has no GPU: whether each method runs on one was not checked (available: null)"])
        + [
            "weight_bytes: the artifact's stored tensor bytes, quantization state included; "
            "total_bytes = weights as resident on the device + KV cache + activation estimate",
            "KV cache: transformers' DynamicCache (sliding-window layers keep window-1 tokens); llama.cpp: F16, context padded to 256",
        ],
    }

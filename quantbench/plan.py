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
- The peak while quantizing, per the recipe's strategy (QUANTIZE_STRATEGIES): whole-model load,
  quantize-on-load, or layer by layer with Hessians and calibration activations.

The target device matters: bitsandbytes repacks 4-bit weights with bf16 absmax on CPUs with
AVX512-BF16, and unquantized tensors load in bf16 or fp32 depending on the hardware.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from quantbench.arch import EMBED, LAYER_LINEARS, LINEAR, ArchSpec, TensorSpec
from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096
# Calibration assumed for layer-by-layer methods when the recipe does not say (the CLI's defaults).
DEFAULT_CALIBRATION_SAMPLES = 32
DEFAULT_CALIBRATION_LENGTH = 512
# transformers' save_pretrained shards at 50 GB (modeling_utils.save_pretrained max_shard_size): a
# CUDA-resident shard is copied to host memory whole before it is written.
SAVE_SHARD_BYTES = 50 * 10**9

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


# ---------------------------------------------------------------------------------------------------
# Where the config comes from


@dataclass(frozen=True)
class ModelConfig:
    name: str  # what the user typed
    source: str  # "preset", "local folder", "config.json", "hub", "built-in default model", "gguf"
    config: dict  # completed with transformers' defaults (what transformers would build)
    hub_id: str | None = None
    notes: tuple[str, ...] = ()


def complete_config(raw: dict) -> tuple[dict, list[str]]:
    """The config as transformers reads it: published files omit defaults (Gemma-2 omits
    tie_word_embeddings, whose default True removes lm_head), so fill them in from transformers'
    own config class. Multimodal configs give their text config."""
    notes: list[str] = []
    config = raw
    if "text_config" in raw and "hidden_size" not in raw:
        config = {**raw["text_config"], "model_type": raw["text_config"].get("model_type", raw.get("model_type"))}
    model_type = config.get("model_type")
    if not model_type:
        raise QuantbenchError("the config has no model_type; is this a transformers config.json?")
    try:
        from transformers import AutoConfig

        fields = {k: v for k, v in config.items() if k != "model_type"}
        completed = AutoConfig.for_model(model_type, **fields).to_dict()
        completed["model_type"] = model_type
        if "dtype" not in completed or completed["dtype"] is None:
            completed["dtype"] = config.get("torch_dtype") or config.get("dtype")
        return completed, notes
    except Exception as exc:  # transformers does not know this model_type: read the file as it is
        notes.append(f"transformers could not read the config ({type(exc).__name__}); defaults were not filled in")
        return dict(config), notes


def load_model_config(spec: str | None) -> ModelConfig:
    """MODEL -> config: a preset name, a local folder or config.json, a .gguf, or a hub id (config only)."""
    from quantbench.presets import find_preset, preset_names
    from quantbench.sources.model import DEFAULT_MODEL, resolve_model

    if spec is None or spec == DEFAULT_MODEL:
        source = resolve_model(None)
        config, notes = complete_config(source.config())
        return ModelConfig(DEFAULT_MODEL, "built-in default model", config, None, tuple(notes))
    preset = find_preset(spec)
    if preset is not None:
        name, hub_id, raw = preset
        config, notes = complete_config(raw)
        return ModelConfig(name, "preset", config, hub_id, tuple(notes))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QuantbenchError(f"{path}: no config.json in this folder; plan needs only config.json")
        return _from_file(spec, path / "config.json", "local folder")
    if path.is_file() and path.suffix == ".json":
        return _from_file(spec, path, "config.json")
    if path.is_file() and path.suffix == ".gguf":
        config, notes = complete_config(resolve_model(str(path)).config())
        return ModelConfig(spec, "gguf", config, None, tuple(notes))
    if path.exists():
        raise QuantbenchError(f"{spec}: expected a model folder, a config.json or a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hub(spec)
    raise QuantbenchError(
        f"model '{spec}' not found: give a preset ({', '.join(preset_names())}), a local folder or "
        "config.json, a .gguf file, or a hub id (org/name)"
    )


def _from_file(spec: str, path: Path, source: str) -> ModelConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{path}: unreadable JSON ({exc})") from None
    config, notes = complete_config(raw)
    return ModelConfig(spec, source, config, None, tuple(notes))


def _from_hub(repo_id: str) -> ModelConfig:
    from quantbench.presets import preset_names

    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json", etag_timeout=10)
    except Exception as exc:
        raise QuantbenchError(
            f"could not fetch config.json of '{repo_id}' from the Hugging Face hub ({type(exc).__name__}). "
            f"Offline? Pass a local config.json, or a preset: {', '.join(preset_names())}"
        ) from None
    cfg = _from_file(repo_id, Path(path), "hub")
    return ModelConfig(repo_id, "hub", cfg.config, repo_id, cfg.notes)


# ---------------------------------------------------------------------------------------------------
# KV cache and activations


def cache_tokens_per_layer(config: dict, context: int, runtime: str) -> list[int]:
    """Tokens of K/V each layer holds after `context` tokens.

    transformers' DynamicCache (cache_utils.get_layer_types_and_kwargs): layer_types from the config,
    else every layer sliding when `sliding_window` is set; a DynamicSlidingWindowLayer keeps the last
    sliding_window - 1 tokens. llama.cpp (quantbench.runtimes.llamacpp) sizes its context to a multiple
    of 256, at least 512, and allocates it for every layer.
    """
    layers = config["num_hidden_layers"]
    if runtime == "llama.cpp":
        padded = max(512, -(-context // 256) * 256)
        return [padded] * layers
    window = config.get("sliding_window")
    layer_types = config.get("layer_types") or (["sliding_attention" if window else "full_attention"] * layers)
    return [min(context, window - 1) if kind == "sliding_attention" and window else context for kind in layer_types]


def kv_cache_bytes(arch: ArchSpec, config: dict, context: int, batch: int, bytes_per_value: int, runtime: str) -> int:
    """K and V: 2 * kv_heads * head_dim * tokens * batch * bytes, summed over layers."""
    per_token = 2 * arch.num_kv_heads * arch.head_dim * bytes_per_value * batch
    return per_token * sum(cache_tokens_per_layer(config, context, runtime))


def activation_bytes(arch: ArchSpec, context: int, batch: int, bytes_per_value: int) -> int:
    """Estimate of the transient activations of one prefill forward over `context` tokens.

    The widest point of a decoder layer is the MLP: its input and the residual stream (2 x hidden),
    gate, up and act(gate) * up (3 x intermediate), per token; attention through SDPA materializes no
    score matrix. Plus fp32 logits of the last position (generation keeps only those). Not counted:
    the CUDA context and allocator slack (a few hundred MB on a GPU).
    """
    per_token = (2 * arch.hidden_size + 3 * arch.intermediate_size) * bytes_per_value
    return batch * context * per_token + batch * arch.vocab_size * 4


# ---------------------------------------------------------------------------------------------------
# Memory while quantizing


@dataclass(frozen=True)
class QuantizeStrategy:
    name: str
    runs_on: str  # "device" (the user's device) or "host" (CPU RAM, whatever the device)
    description: str
    work_bytes: int | None = None  # bytes per value the quantizer works in; None: the model's compute dtype


QUANTIZE_STRATEGIES = {
    s.name: s
    for s in (
        QuantizeStrategy(
            "load-convert", "host",
            "transformers loads the model in the target dtype tensor by tensor and saves it",
        ),
        QuantizeStrategy(
            "quantize-on-load", "device",
            "transformers loads each tensor to the device and bitsandbytes quantizes it there; "
            "saving from a GPU copies each shard to host memory",
        ),
        QuantizeStrategy(
            "whole-model", "host",
            "the whole source model is loaded (llama.cpp's quantize maps its input file in full), "
            "then each tensor is converted to fp32 and quantized",
        ),
        QuantizeStrategy(
            "streaming", "host",
            "one tensor at a time is read from the source shards, converted and written (quantbench's GGUF writer)",
            work_bytes=4,
        ),
        QuantizeStrategy(
            "fp32-model-per-tensor", "device",
            "the model is loaded in fp32 in host memory; each linear goes to the device alone (round-to-nearest)",
            work_bytes=4,
        ),
        QuantizeStrategy(
            "layer-by-layer", "device",
            "the model stays in host memory in fp32; one decoder layer at a time goes to the device with its "
            "Hessians and the calibration activations (methods/sequential.py)",
            work_bytes=4,
        ),
    )
}
# By family, or by (family, needs_calibration) where a family holds both kinds. A recipe's own
# `quantize_strategy` attribute wins over both.
QUANTIZE_STRATEGY_BY_FAMILY = {
    "float": "load-convert",
    "bitsandbytes": "quantize-on-load",
    "gguf": "whole-model",
    ("gptq", True): "layer-by-layer",
    ("gptq", False): "fp32-model-per-tensor",
    "awq": "layer-by-layer",
}
_FALLBACK_STRATEGY = "whole-model"

# Which activation each linear of a layer reads (LAYER_LINEARS kinds): linears reading the same
# activation share one Hessian (quantbench.methods.sequential.INPUT_GROUPS).
_INPUT_OF_KIND = {"q": "attention input", "kv": "attention input", "o": "attention output", "up": "MLP input", "down": "MLP activation"}


def strategy_for(recipe) -> tuple[QuantizeStrategy, str | None]:
    name = (
        getattr(recipe, "quantize_strategy", "")
        or QUANTIZE_STRATEGY_BY_FAMILY.get((recipe.family, bool(recipe.needs_calibration)))
        or QUANTIZE_STRATEGY_BY_FAMILY.get(recipe.family, "")
    )
    note = None
    if not name:
        name = _FALLBACK_STRATEGY
        note = f"family '{recipe.family}' has no quantize strategy in quantbench.plan; assumed {name}"
    if name not in QUANTIZE_STRATEGIES:
        raise QuantbenchError(f"{recipe.name}: unknown quantize_strategy '{name}'; one of {', '.join(QUANTIZE_STRATEGIES)}")
    return QUANTIZE_STRATEGIES[name], note


def quantize_peak(
    strategy: QuantizeStrategy,
    arch: ArchSpec,
    stored: dict[str, int],
    source_bytes: int,
    compute_bytes: int,
    device: str,
    calibration_samples: int,
    calibration_length: int,
) -> dict:
    """Peak memory while quantizing, as named components; `peak_bytes` is on the device it runs on."""
    work = strategy.work_bytes or compute_bytes
    tensors = arch.tensors()
    largest = max(t.numel for t in tensors)
    largest_linear = max((t for t in tensors if t.role == LINEAR), key=lambda t: t.numel)
    weight_bytes = sum(stored.values())
    device_parts: dict[str, int] = {}
    host_parts: dict[str, int] = {}
    if strategy.name == "load-convert":
        host_parts["converted model"] = weight_bytes
        host_parts["one source tensor being converted"] = largest * source_bytes
    elif strategy.name == "quantize-on-load":
        device_parts["quantized model"] = weight_bytes  # the stored layout; CPU repacking waits for a forward
        device_parts["one tensor in the load dtype before quantizing"] = largest * compute_bytes
        device_parts["quantizer's working copy of it"] = largest_linear.numel * compute_bytes
        if device != "cpu":
            host_parts["a saved shard copied from the device"] = min(weight_bytes, SAVE_SHARD_BYTES)
    elif strategy.name == "whole-model":
        host_parts["whole source model"] = arch.num_params() * source_bytes
        host_parts["fp32 copy of the largest tensor"] = largest * 4
        host_parts["its quantized output"] = max(stored.values())
    elif strategy.name == "streaming":
        host_parts["one source tensor in fp32"] = largest * work
        host_parts["its stored form"] = max(stored.values())
    elif strategy.name == "fp32-model-per-tensor":
        device_parts["one linear in fp32"] = largest_linear.numel * work
        device_parts["its quantized form"] = stored[largest_linear.name]
        host_parts["source model in fp32"] = arch.num_params() * work
        host_parts["quantized output"] = weight_bytes
    elif strategy.name == "layer-by-layer":
        layer0 = [t for t in tensors if t.layer == 0]
        device_parts["one decoder layer in the working dtype"] = sum(t.numel for t in layer0) * work
        hessian_cols = {}
        for _, _, kind in LAYER_LINEARS:
            cols = arch._linear_shape(kind)[1]
            hessian_cols[_INPUT_OF_KIND[kind]] = cols
        device_parts["Hessians, cols^2 fp32 per input of one layer"] = sum(c * c * 4 for c in hessian_cols.values())
        rows, cols = largest_linear.shape
        device_parts["fp32 W, Q and Err of the largest linear, and its H^-1"] = 3 * rows * cols * 4 + cols * cols * 4
        device_parts["calibration activations (layer inputs and outputs)"] = (
            2 * calibration_samples * calibration_length * arch.hidden_size * work
        )
        host_parts["source model in the working dtype"] = arch.num_params() * work
        host_parts["quantized output"] = weight_bytes
    else:
        raise QuantbenchError(f"no peak formula for strategy '{strategy.name}'")
    on_host = strategy.runs_on == "host" or device == "cpu"
    if on_host:
        host_parts.update(device_parts)
        device_parts = {}
    host_peak = sum(host_parts.values())
    out = {
        "strategy": strategy.name,
        "runs_on": "host" if on_host else device,
        "description": strategy.description,
        "peak_bytes": host_peak if on_host else sum(device_parts.values()),
        "host_peak_bytes": host_peak,
        "device_parts": device_parts,
        "host_parts": host_parts,
    }
    if strategy.name == "layer-by-layer":
        out["calibration"] = {"samples": calibration_samples, "length": calibration_length}
    return out


# ---------------------------------------------------------------------------------------------------
# Device memory


def device_memory(device: str) -> tuple[int, str]:
    """Free memory of the target: free CUDA memory (torch.cuda.mem_get_info) or available RAM (psutil)."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise QuantbenchError(
                "planning for a GPU, but this machine has none: pass --device-memory (e.g. 24GB) for the GPU you mean"
            )
        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return int(free), f"free memory of cuda:{index} ({torch.cuda.get_device_name(index)}, {total / 1e9:.1f} GB total)"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM (psutil)"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def _plan_kwargs(recipe, device: str, resident: bool) -> dict:
    """plan_tensor(tensor, arch) is the contract; recipes whose layout depends on the device also take
    `device` and `resident` keywords (bitsandbytes)."""
    params = inspect.signature(recipe.plan_tensor).parameters
    wanted = {"device": device, "resident": resident}
    return {k: v for k, v in wanted.items() if k in params}


def _plan_tensors(recipe, arch: ArchSpec, tensors: list[TensorSpec], device: str) -> _MethodPlan:
    out = _MethodPlan()
    stored_kwargs = _plan_kwargs(recipe, device, False)
    resident_kwargs = _plan_kwargs(recipe, device, True)
    for t in tensors:
        p = recipe.plan_tensor(t, arch, **stored_kwargs)
        out.stored[t.name] = p.stored_bytes
        if "resident" in resident_kwargs:
            out.resident[t.name] = recipe.plan_tensor(t, arch, **resident_kwargs).stored_bytes
        else:  # the recipe's layout in memory is its stored layout
            out.resident[t.name] = p.stored_bytes
        entry = out.storage.setdefault(p.storage, [0, 0])
        entry[0] += 1
        entry[1] += p.stored_bytes
        if p.quantized:
            out.quantized_numel += t.numel
            out.quantized_bytes += p.stored_bytes
            out.quantized_tensors += 1
    return out


def _compute_bytes(recipe, device: str) -> int:
    """Bytes per activation / KV value: the recipe's dtype for float recipes, F16 for llama.cpp's
    cache, else the half dtype the device computes in (bf16, or fp32 on a CPU without bf16)."""
    import torch

    dtype = getattr(recipe, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return torch.tensor([], dtype=dtype).element_size()
    if recipe.runtime == "llama.cpp":
        return 2  # llama.cpp's default cache type is F16
    if device == "cpu":
        from quantbench.device import best_half_dtype

        return torch.tensor([], dtype=best_half_dtype("cpu")).element_size()
    return 2


def plan(
    model_spec: str | None,
    context: int = DEFAULT_CONTEXT,
    batch: int = 1,
    device_memory_bytes: int | None = None,
    methods: list[str] | None = None,
    device: str | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    calibration_length: int = DEFAULT_CALIBRATION_LENGTH,
) -> dict:
    """Exact bytes of every method for `model_spec` on `device` ("cuda" or "cpu"; default: cuda when
    present). The layout is the one that device produces (see BnbRecipe.plan_tensor)."""
    import torch

    from quantbench.recipes import all_recipes, get_recipe

    if context < 1 or batch < 1:
        raise QuantbenchError("--context and --batch must be at least 1")
    device = device or default_device()
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise QuantbenchError(f"unknown device '{device}'; plan for cpu or cuda")
    model = load_model_config(model_spec)
    arch = ArchSpec.from_config(model.config)
    tensors = arch.tensors()
    params = sum(t.numel for t in tensors)
    source_bytes = _DTYPE_BYTES.get(str(model.config.get("dtype") or "float32").removeprefix("torch."), 4)
    if device_memory_bytes is None:
        memory, memory_source = device_memory(device)
    else:
        memory, memory_source = int(device_memory_bytes), "given (--device-memory)"

    recipes = all_recipes() if methods is None else [get_recipe(m) for m in methods]
    rows = []
    no_plan = []  # recipes whose plan_tensor is not written yet
    unsupported = []  # recipes that refuse this model
    checkable = device == "cpu" or torch.cuda.is_available()  # a GPU that is not here cannot be asked
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
        compute_bytes = _compute_bytes(recipe, device)
        kv = kv_cache_bytes(arch, model.config, context, batch, compute_bytes, recipe.runtime)
        act = activation_bytes(arch, context, batch, compute_bytes)
        total = resident_bytes + kv + act
        strategy, strategy_note = strategy_for(recipe)
        samples = getattr(recipe, "calibration_samples", calibration_samples)
        length = getattr(recipe, "calibration_length", calibration_length)
        peak = quantize_peak(strategy, arch, mp.stored, source_bytes, compute_bytes, device, samples, length)
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
            quantize_fits=peak["peak_bytes"] <= memory if peak["runs_on"] != "host" or device == "cpu" else None,
            quantize=peak,
        )
        if strategy_note:
            row["quantize_note"] = strategy_note
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


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:.1f} MB"


def format_table(result: dict) -> str:
    """The readable form of a plan: one line per method, then the methods with no plan, loudly."""
    m = result["model"]
    lines = [
        f"model: {m['name']} ({m['source']}) {m['model_type']}, {m['params'] / 1e9:.3f} B params, "
        f"{m['layers']} layers, hidden {m['hidden_size']}, vocab {m['vocab_size']}"
        + (", tied embeddings" if m["tied_embeddings"] else ""),
        f"context {result['context']} x batch {result['batch']} on {result['device']}; "
        f"memory {format_bytes(result['device_memory_bytes'])} ({result['device_memory_source']})",
        "",
        f"{'method':22} {'weights':>10} {'bpw':>6} {'bpw(q)':>6} {'KV cache':>10} {'activ.':>9} {'total':>10} {'fits':>5}"
        f"  {'quantize peak':>13} {'where':>5} {'host peak':>10}  strategy",
    ]
    for r in result["methods"]:
        if not r.get("planned"):
            lines.append(f"{r['method']:22} {r['no_plan_reason'].upper() if r['method'] in result['no_plan'] else r['no_plan_reason']}")
            continue
        bpw_q = f"{r['bits_per_weight_quantized']:.3f}" if r["bits_per_weight_quantized"] else "-"
        where = "host" if r["quantize_runs_on"] == "host" else "dev"
        lines.append(
            f"{r['method']:22} {format_bytes(r['weight_bytes']):>10} {r['bits_per_weight']:6.3f} {bpw_q:>6} "
            f"{format_bytes(r['kv_cache_bytes']):>10} {format_bytes(r['activation_bytes']):>9} "
            f"{format_bytes(r['total_bytes']):>10} {'yes' if r['fits'] else 'NO':>5}  "
            f"{format_bytes(r['quantize_peak_bytes']):>13} {where:>5} {format_bytes(r['quantize_host_peak_bytes']):>10}  "
            f"{r['quantize_strategy']}"
            + ("" if r["available"] in (True, None) else f"  (not runnable here: {r['unavailable_reason']})")
        )
    if result["no_plan"]:
        lines += ["", f"WARNING: {len(result['no_plan'])} method(s) have no size plan yet: {', '.join(result['no_plan'])}"]
    lines += ["", *[f"note: {n}" for n in result["notes"]]]
    return "\n".join(lines)

"""Layer-by-layer calibrated quantization: one decoder layer on the device at a time.

1. Run the embeddings on the calibration samples and capture what decoder layer 0 receives (hidden
   states plus the keyword arguments the model passes every layer: rotary cos/sin, mask, ...).
2. For each layer: move it to the device; for each group of linears that read the same activation,
   in forward order, run the layer only as far as that activation (hooks), collect statistics
   (Hessian H = 2 X^T X / tokens, mean |x| per channel), quantize the group and write the dequantized
   weights back, so later groups see the quantized earlier ones ("true sequential" in the GPTQ code);
   then run the whole quantized layer to produce the inputs of the next layer.

Device memory: one layer, its Hessians, and the calibration activations (inputs and outputs of the
current layer). The model itself stays in host memory.

Where the layers live, which linears read the same activation and which op each group's scale folds
into are the architecture record's (quantbench.arch.ArchFamily), passed in as `family`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from quantbench.arch import FAMILIES, ArchFamily, ArchSpec
from quantbench.errors import QuantbenchError
from quantbench.methods.awq import AWQConfig, clip_search, fold_scale_into_parent, scale_search
from quantbench.methods.gptq import GPTQConfig, HessianAccumulator, gptq_quantize, output_error
from quantbench.device import peak_rss_bytes
from quantbench.methods.rtn import QuantizedLinear, RTNConfig, rtn_quantize

log = logging.getLogger(__name__)

@dataclass
class LayerInputs:
    hidden: list[torch.Tensor]  # chunks of (batch, length, hidden) on the device
    kwargs: list[dict]  # per chunk: what the model passes every decoder layer besides the hidden states


@dataclass
class SequentialResult:
    linears: dict[str, QuantizedLinear] = field(default_factory=dict)  # module name -> result, on CPU
    # module name -> {"error": ||WX - QX||^2 / ||WX||^2 of this method, "rtn_error": same for RTN}
    errors: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # per-layer decisions worth reporting (e.g. skipped scalings)
    seconds: float = 0.0
    peak_device_bytes: int | None = None  # torch.cuda.max_memory_allocated on CUDA
    peak_rss_bytes: int = 0  # the process's peak resident memory (whole process lifetime)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted activation has been seen."""


def model_family(model) -> ArchFamily:
    """The architecture record of a transformers model."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in FAMILIES:
        raise QuantbenchError(f"{type(model).__name__}: model_type '{model_type}' is not one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def decoder_layers(model) -> torch.nn.ModuleList:
    family = model_family(model)
    try:
        return model.get_submodule(family.layers)
    except AttributeError:
        raise QuantbenchError(f"{type(model).__name__}: no {family.layers}, where {family.model_type} models keep their layers") from None


@torch.no_grad()
def capture_layer0_inputs(model, samples: list[list[int]], device: str, batch_size: int) -> LayerInputs:
    """Run embeddings (on the device) and stop at decoder layer 0, keeping what it would receive."""
    if not samples or len({len(s) for s in samples}) != 1:
        raise QuantbenchError("calibration samples must be non-empty and of equal length")
    family = model_family(model)
    inner = model.get_submodule(family.decoder)
    moved = [_submodule(model, name) for name in (family.embed, family.rotary)]
    moved = [m for m in moved if m is not None]
    for m in moved:
        m.to(device)
    hidden, kwargs = [], []

    def catch(module, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        drop = ("hidden_states", "past_key_values", "past_key_value")  # no KV cache while calibrating
        kwargs.append({**{k: v for k, v in kw.items() if k not in drop}, "use_cache": False})
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, len(samples), batch_size):
            ids = torch.tensor(samples[start : start + batch_size], dtype=torch.long, device=device)
            try:
                inner(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
        for m in moved:
            m.to("cpu")
    return LayerInputs(hidden, kwargs)


def _submodule(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _layer_output(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_layer(layer, inputs: LayerInputs) -> LayerInputs:
    return LayerInputs([_layer_output(layer(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs)], inputs.kwargs)


@dataclass
class InputStats:
    hessian: HessianAccumulator
    abs_sum: torch.Tensor  # (cols,) sum over tokens of |x|, for AWQ's activation scale

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.hessian.tokens, 1)


@torch.no_grad()
def observe_inputs(layer, inputs: LayerInputs, module_names: Iterable[str], stop: bool) -> dict[str, InputStats]:
    """Statistics of the inputs of the named modules over all calibration chunks.

    stop=True ends each forward pass at the last module observed (it must be the latest in forward order).
    """
    stats: dict[str, InputStats] = {}
    handles = []
    names = list(module_names)

    def make_hook(name):
        def hook(module, args):
            X = args[0].detach()
            X = X.reshape(-1, X.shape[-1])  # (tokens, cols)
            if name not in stats:
                stats[name] = InputStats(HessianAccumulator(X.shape[-1], X.device), torch.zeros(X.shape[-1], device=X.device))
            stats[name].hessian.add(X)
            stats[name].abs_sum += X.float().abs().sum(dim=0)
            if stop and name == names[-1]:
                raise _Stop

        return hook

    for name in names:
        handles.append(layer.get_submodule(name).register_forward_pre_hook(make_hook(name)))
    try:
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            try:
                layer(h, **kw)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _relative_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    reference = float(((W.to(H.dtype) @ H) * W.to(H.dtype)).sum())
    return output_error(W, W_hat, H) / max(reference, 1e-30)


def _set_weight(module, W: torch.Tensor) -> None:
    module.weight.data.copy_(W.to(module.weight.dtype))


ConfigFor = Callable[[str, torch.Tensor], "GPTQConfig | AWQConfig"]


def gptq_layer(
    layer, inputs: LayerInputs, prefix: str, family: ArchFamily, config_for: ConfigFor, result: SequentialResult, true_sequential: bool = True
) -> None:
    """GPTQ every linear of one layer, in place (weights replaced by their dequantized values)."""
    input_groups = family.input_groups
    groups = input_groups if true_sequential else (tuple(n for g in input_groups for n in g),)
    for names in groups:
        first_of_group = [g[0] for g in input_groups if g[0] in names]
        stats = observe_inputs(layer, inputs, first_of_group, stop=True)
        for group in input_groups:
            if group[0] not in stats:
                continue
            H = stats[group[0]].hessian.H  # (cols, cols), shared by the group
            for name in group:
                module = layer.get_submodule(name)
                W = module.weight.detach()  # (rows, cols)
                config = config_for(f"{prefix}.{name}", W)
                q = gptq_quantize(W, H, config)
                W_hat = q.dequantize()
                rtn = rtn_quantize(W, RTNConfig(config.bits, config.group_size, config.scale_dtype)).dequantize()
                result.errors[f"{prefix}.{name}"] = {"error": _relative_error(W, W_hat, H), "rtn_error": _relative_error(W, rtn, H)}
                result.linears[f"{prefix}.{name}"] = q.to("cpu")
                _set_weight(module, W_hat)
            del stats[group[0]]


def awq_layer(layer, inputs: LayerInputs, prefix: str, family: ArchFamily, config_for: ConfigFor, result: SequentialResult) -> None:
    """AWQ one layer in place: search and fold per-channel scales, clip, round to nearest."""
    input_groups = family.input_groups
    stats = observe_inputs(layer, inputs, [g[0] for g in input_groups], stop=False)
    original = {n: layer.get_submodule(n).weight.detach().float().clone() for g in input_groups for n in g}
    in_scale: dict[str, torch.Tensor] = {}  # group's first module -> s (cols,): the group now reads X / s
    out_scale: dict[str, torch.Tensor] = {}  # linear parent -> s: its outputs are now divided by s
    for names, parent_name in zip(input_groups, family.scale_parents):
        modules = [layer.get_submodule(n) for n in names]
        parent = layer.get_submodule(parent_name)
        cols = modules[0].weight.shape[1]
        if isinstance(parent, torch.nn.Linear) and parent.out_features != cols:
            result.notes.append(f"{prefix}.{names[0]}: not scaled ({parent_name} has {parent.out_features} outputs, grouped-query attention)")
            continue
        configs = [config_for(f"{prefix}.{n}", m.weight) for n, m in zip(names, modules)]
        H = stats[names[0]].hessian.H  # (cols, cols)
        s, alpha = scale_search([m.weight.detach() for m in modules], H, stats[names[0]].mean_abs, configs)
        fold_scale_into_parent(parent, s)
        for m in modules:
            _set_weight(m, m.weight.detach().float() * s[None, :])
        in_scale[names[0]] = s
        if isinstance(parent, torch.nn.Linear):
            out_scale[parent_name] = s
        result.notes.append(f"{prefix}.{names[0]}: AWQ scale exponent alpha={alpha:.2f}")
    for names in input_groups:
        H0 = stats[names[0]].hessian.H  # original inputs X
        s_in = in_scale.get(names[0], torch.ones(H0.shape[0], device=H0.device))
        H = H0 / torch.outer(s_in, s_in)  # inputs X / s
        for name in names:
            module = layer.get_submodule(name)
            config = config_for(f"{prefix}.{name}", module.weight)
            W = module.weight.detach().float()  # (rows, cols), scaled
            if config.clip and name not in family.no_clip:
                W = clip_search(W, H, config)
            q = rtn_quantize(W, RTNConfig(config.bits, config.group_size, config.scale_dtype))
            W_hat = q.dequantize()  # (rows, cols)
            _set_weight(module, W_hat)
            result.linears[f"{prefix}.{name}"] = q.to("cpu")
            # Error in the original coordinates: X reads W_hat / s_in, and outputs divided by s_out are
            # multiplied back by the next group.
            s_out = out_scale.get(name, torch.ones(W.shape[0], device=W.device))
            effective = W_hat / s_in[None, :] * s_out[:, None]
            W0 = original[name]
            rtn = rtn_quantize(W0, RTNConfig(config.bits, config.group_size, config.scale_dtype)).dequantize()
            result.errors[f"{prefix}.{name}"] = {"error": _relative_error(W0, effective, H0), "rtn_error": _relative_error(W0, rtn, H0)}


def quantize_layers(
    layers: Iterable[torch.nn.Module],
    inputs: LayerInputs,
    device: str,
    quantize_layer: Callable[[torch.nn.Module, LayerInputs, str, SequentialResult], None],
    prefix: str,
    offload: bool = True,
) -> SequentialResult:
    """The loop: each layer to the device, quantize it, feed its quantized outputs to the next.

    `prefix` names the layers' ModuleList in the model (ArchFamily.layers), for the result's module names.
    """
    result = SequentialResult()
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for index, layer in enumerate(layers):
        t0 = time.perf_counter()
        layer.to(device)
        quantize_layer(layer, inputs, f"{prefix}.{index}", result)
        with torch.no_grad():
            inputs = run_layer(layer, inputs)
        if offload:
            layer.to("cpu")
        log.info("layer %d quantized in %.1f s", index, time.perf_counter() - t0)
    if on_cuda:
        torch.cuda.synchronize(device)
        result.peak_device_bytes = torch.cuda.max_memory_allocated(device)
    result.seconds = time.perf_counter() - start
    result.peak_rss_bytes = peak_rss_bytes()
    return result


def check_awq_supported(arch: ArchSpec) -> None:
    if arch.family.norm_offset:
        raise QuantbenchError(
            f"AWQ here folds scales into Llama-style RMSNorm weights; '{arch.model_type}' norms scale by (1 + w). "
            "Use GPTQ or RTN for this model."
        )

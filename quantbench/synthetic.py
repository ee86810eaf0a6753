"""Random weights of an architecture, quantized and packed the way each family's artifact stores them.

For `quantbench bench` on the fast runtime: instead of building a transformers model and swapping
modules, every tensor of the arch record is drawn at random on the device (normal, std = the config's
initializer_range, as transformers initializes; norms = 1), each linear is quantized by the family's
own method code and packed by its own format code, and the result is a name -> tensor mapping with
exactly the keys and layouts the written artifact would hold, plus the config.json it would carry.
The runtime then loads that mapping through the same reader that loads a folder
(`runtimes.fast.stored.TensorSource`). One linear is dense at a time, so building needs about the
stored bytes plus one fp32 layer.

- float: every tensor in the recipe's dtype.
- compressed-tensors (rtn / gptq / awq names): values by round-to-nearest (`methods.rtn`: GPTQ and AWQ
  choose different values on the same grid, which random weights cannot calibrate; speed and memory
  depend on the format only), packed by `formats.compressed_tensors.encode_linear`; lm_head, embeddings
  and norms stored in 16 bits as the recipe writes them.
- bitsandbytes: bitsandbytes' own quantize_4bit / int8_vectorwise_quant, saved keys as
  `Linear4bit` / `Linear8bitLt` write them (`<m>.weight.<quant state>`, `<m>.SCB`).
"""

from __future__ import annotations

import logging
import torch

from quantbench.arch import EMBED, LINEAR, LM_HEAD, ArchSpec
from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)

# How the values of integer-grid names are chosen here (the bench row says so).
INT_GRID_VALUES_NOTE = "values by RTN on random weights (GPTQ/AWQ store the same format; calibration needs a real model)"


def _random(shape: tuple[int, ...], std: float, device: str, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * std


def packed_random_artifact(config: dict, recipe, device: str, seed: int = 0,
                           dtype: torch.dtype | None = None) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config.json dict, stored tensors on `device`, note) for `recipe` applied to random weights."""
    arch = ArchSpec.from_config(config)
    from quantbench.recipes.intgrid import IntGridRecipe

    family = recipe.family
    if family == "float":
        encode, half, quant_config, note = _float_encoder(recipe)
    elif isinstance(recipe, IntGridRecipe):
        encode, half, quant_config, note = _int_grid_encoder(recipe, arch, dtype)
    elif family == "bitsandbytes":
        encode, half, quant_config, note = _bnb_encoder(recipe, dtype or torch.bfloat16)
    else:
        raise QuantbenchError(f"{recipe.name}: random-weight packing knows float, integer-grid and bitsandbytes "
                              f"recipes, not {family}; GGUF rows come from benchmarks/llamacpp_cuda_bench.py")
    generator = torch.Generator(device=device).manual_seed(seed)
    std = float(config.get("initializer_range", 0.02))
    tensors: dict[str, torch.Tensor] = {}
    for spec in arch.tensors():
        if spec.role == LINEAR:
            tensors.update(encode(spec.name.removesuffix(".weight"), _random(spec.shape, std, device, generator)))
        elif spec.role in (EMBED, LM_HEAD):
            tensors[spec.name] = _random(spec.shape, std, device, generator).to(half)
        elif spec.name.endswith(".bias"):
            tensors[spec.name] = torch.zeros(spec.shape, dtype=half, device=device)
        else:  # RMSNorm weights start at one
            tensors[spec.name] = torch.ones(spec.shape, dtype=half, device=device)
    out_config = {**config, "dtype": str(half).removeprefix("torch.")}
    out_config.pop("torch_dtype", None)
    if quant_config:
        out_config["quantization_config"] = quant_config
    return out_config, tensors, note


def _float_encoder(recipe):
    dtype = recipe.dtype

    def encode(module: str, W: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{module}.weight": W.to(dtype)}

    return encode, dtype, None, ""


def _int_grid_encoder(recipe, arch: ArchSpec, dtype: torch.dtype | None):
    from quantbench.formats.compressed_tensors import encode_linear, quantization_config
    from quantbench.methods.rtn import RTNConfig, rtn_quantize

    storage = dtype or torch.float16  # the recipe's default storage dtype (option `dtype`)
    scale_dtype = str(storage).removeprefix("torch.")
    group_size = recipe.effective_group_size(arch)
    config = RTNConfig(recipe.bits, group_size, scale_dtype)

    def encode(module: str, W: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{module}.{suffix}": t for suffix, t in encode_linear(rtn_quantize(W, config)).items()}

    note = INT_GRID_VALUES_NOTE if recipe.family != "rtn" else ""
    return encode, storage, quantization_config(recipe.bits, group_size, storage, ignore=["lm_head"]), note


def _bnb_encoder(recipe, compute_dtype: torch.dtype):
    import bitsandbytes.functional as bnbf

    s = recipe.settings

    if s.bits == 8:
        def encode(module: str, W: torch.Tensor) -> dict[str, torch.Tensor]:
            # What Int8Params does when moved to the GPU: row-wise absmax int8 of the fp16 weight.
            CB, SCB, _ = bnbf.int8_vectorwise_quant(W.to(torch.float16))
            return {f"{module}.weight": CB, f"{module}.SCB": SCB,
                    f"{module}.weight_format": torch.tensor(0, dtype=torch.uint8, device=W.device)}
    else:
        def encode(module: str, W: torch.Tensor) -> dict[str, torch.Tensor]:
            # What Params4bit does when moved to the GPU, then Linear4bit's saved keys.
            packed, state = bnbf.quantize_4bit(W.to(compute_dtype), blocksize=64, compress_statistics=s.double_quant,
                                               quant_type=s.quant_type, quant_storage=torch.uint8)
            out = {f"{module}.weight": packed}
            out.update({f"{module}.weight.{k}": v for k, v in state.as_dict(packed=True).items()})
            return out

    quant_config = recipe.quantization_config(compute_dtype).to_dict()
    return encode, compute_dtype, quant_config, ""


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())

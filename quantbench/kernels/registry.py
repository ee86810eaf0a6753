"""Which kernels serve each weight format: its reference (the spec) and its fast versions, in order.

A runtime asks once per layer at load: `fast = pick_fast(FORMAT, weight, device, x_dtype)`, keeps
`prepared = fast.prepare(weight)` (on the device; most kernels read the stored tensors as they are)
and calls `fast.matmul(x, prepared, bias)` every step. Where no fast kernel takes the weight it
raises, naming why, rather than falling back silently.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from quantbench.errors import QuantbenchError
from quantbench.kernels import reference

INT_GROUP = "int-group"  # compressed-tensors pack-quantized (rtn / gptq / awq artifacts)
BNB_4BIT = "bnb-4bit"  # bitsandbytes nf4 / fp4, with or without double quant
BNB_INT8 = "bnb-int8"  # bitsandbytes LLM.int8
DENSE = "dense"  # bf16 / fp16 weights


@dataclass(frozen=True)
class FastKernel:
    name: str
    prepare: Callable[[Any], Any]  # stored weight (on the device) -> what `matmul` reads; once at load
    matmul: Callable[..., torch.Tensor]  # (x, prepared, bias=None) -> y
    unsupported: Callable[[Any, torch.device, torch.dtype], str | None]  # why it can't take this weight, or None
    numerics: str  # how its result may differ from the reference's


@dataclass(frozen=True)
class FormatKernels:
    format: str
    reference_dequantize: Callable[..., torch.Tensor] | None  # (weight, dtype) -> W (rows, cols)
    reference_matmul: Callable[..., torch.Tensor]  # (x, weight, bias=None) -> y
    fast: tuple[FastKernel, ...]  # preferred first (benchmarks/RESULTS.md has the measurements)
    fast_dequantize: Callable[..., torch.Tensor] | None = None  # bit-exact with reference_dequantize


REGISTRY: dict[str, FormatKernels] = {}


def register(entry: FormatKernels) -> FormatKernels:
    REGISTRY[entry.format] = entry
    return entry


def kernels_for(format: str) -> FormatKernels:
    if format not in REGISTRY:
        raise QuantbenchError(f"no kernels for weight format {format!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[format]


def pick_fast(format: str, weight: Any, device: torch.device | str, x_dtype: torch.dtype, prefer: str | None = None) -> FastKernel:
    """The first registered fast kernel (or the one named `prefer`) that takes this weight on this
    device, else one clear error naming why each could not."""
    device = torch.device(device)
    reasons = []
    candidates = kernels_for(format).fast
    if prefer is not None:
        candidates = tuple(k for k in candidates if k.name == prefer)
        if not candidates:
            raise QuantbenchError(f"no fast kernel named {prefer!r} for {format}; registered: {[k.name for k in kernels_for(format).fast]}")
    for kernel in candidates:
        reason = kernel.unsupported(weight, device, x_dtype)
        if reason is None:
            return kernel
        reasons.append(f"{kernel.name}: {reason}")
    raise QuantbenchError(f"no fast kernel for this {format} weight on {device}: " + "; ".join(reasons or ["none registered"]))


# ---------------------------------------------------------------------------------------------------
# The fast kernels. Each module is imported when first called, so importing this file needs no Triton.


def _lazy(module: str, function: str) -> Callable:
    """quantbench.kernels.`module`.`function`, imported at its first call."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"quantbench.kernels.{module}"), function)(*args, **kwargs)

    call.__qualname__ = f"{module}.{function}"
    return call


def _on_cuda(device: torch.device) -> str | None:
    return None if device.type == "cuda" else "runs on CUDA only"


def _triton_on_cuda(device: torch.device) -> str | None:
    return None if device.type == "cuda" else "runs on CUDA only (TRITON_INTERPRET=1 runs it on CPU for tests)"


def _cuda_float_unsupported(weight, device, x_dtype):
    dtype_ok = x_dtype in (torch.float16, torch.bfloat16, torch.float32)
    return _triton_on_cuda(device) or (None if dtype_ok else f"input dtype {x_dtype} is not fp16/bf16/fp32")


def _triton_int_group_unsupported(weight, device, x_dtype):
    return _cuda_float_unsupported(weight, device, x_dtype) or _lazy("triton_int", "unsupported")(weight)


def _tinygemm_unsupported(weight, device, x_dtype):
    return _on_cuda(device) or _lazy("tinygemm", "unsupported")(weight, x_dtype)


def _llm_int8_unsupported(weight, device, x_dtype):
    dtype_ok = x_dtype in (torch.float16, torch.bfloat16)
    return _triton_on_cuda(device) or (None if dtype_ok else f"LLM.int8 takes fp16/bf16 inputs, not {x_dtype}")


def _dense_matmul(x, weight, bias=None):
    return torch.nn.functional.linear(x, weight, bias)


def _identity(weight):
    return weight


_TRITON_INT = FastKernel(
    name="triton-int-group",
    prepare=_identity,
    matmul=_lazy("triton_int", "matmul"),
    unsupported=_triton_int_group_unsupported,
    numerics="reads the stored layout directly; batch 1 multiplies exact fp32 weights (only the summation "
    "order differs from the reference); batch > 1 rounds each dequantized weight to x's dtype for the "
    "tensor cores, as dequantize(weight, x.dtype) would, then sums in fp32. Measured on an H200 (int4 g128, "
    "benchmarks/RESULTS.md): faster than tinygemm at batch 8 and 32, slower at batch 1",
)
_TINYGEMM = FastKernel(
    name="tinygemm-int4",
    prepare=_lazy("tinygemm", "repack"),
    matmul=_lazy("tinygemm", "matmul"),
    unsupported=_tinygemm_unsupported,
    numerics="core PyTorch's _weight_int4pack_mm: the scales are rounded to bf16 (fp16 ones lose 3 bits) and "
    "the zero point becomes a bf16 offset (8 - z) * scale, so a weight may move by about 2^-8 of 8-16 x its "
    "scale; bf16 inputs only; repacked once at load (+2.3% bytes at g128). Measured on an H200: the faster "
    "at batch 1 (pick it with prefer='tinygemm-int4' where that numerics change is acceptable and stated)",
)

register(
    FormatKernels(
        format=INT_GROUP,
        reference_dequantize=reference.dequantize_int_group,
        reference_matmul=reference.matmul_int_group,
        fast=(_TRITON_INT, _TINYGEMM),
        fast_dequantize=_lazy("triton_int", "dequantize"),
    )
)
register(
    FormatKernels(
        format=BNB_4BIT,
        reference_dequantize=reference.dequantize_bnb_4bit,
        reference_matmul=reference.matmul_bnb_4bit,
        fast=(
            FastKernel(
                name="triton-bnb-4bit",
                prepare=_identity,
                matmul=_lazy("triton_bnb", "matmul"),
                unsupported=_cuda_float_unsupported,
                numerics="reads the stored layout directly; batch 1 multiplies exact fp32 weights; batch > 1 "
                "rounds each dequantized weight to x's dtype (as bitsandbytes' own matmul_4bit does), sums in fp32",
            ),
        ),
        fast_dequantize=_lazy("triton_bnb", "dequantize"),
    )
)
register(
    FormatKernels(
        format=BNB_INT8,
        reference_dequantize=reference.dequantize_bnb_int8,
        reference_matmul=reference.matmul_bnb_int8,
        fast=(
            FastKernel(
                name="triton-llm-int8",
                prepare=_identity,
                matmul=_lazy("triton_int8", "matmul"),
                unsupported=_llm_int8_unsupported,
                numerics="the same outlier decomposition (threshold, fp16 outlier test, int8 rows, exact int32 "
                "sums); the outlier columns' weights are multiplied exactly instead of rounded to x's dtype first "
                "(bitsandbytes and the reference round them): a difference within bf16 rounding; at most 64 tokens a call",
            ),
        ),
    )
)
register(
    FormatKernels(
        format=DENSE,
        reference_dequantize=None,
        reference_matmul=reference.matmul_dense,
        fast=(
            FastKernel(
                name="torch-linear",
                prepare=_identity,
                matmul=_dense_matmul,
                unsupported=lambda weight, device, x_dtype: None,
                numerics="cuBLAS (or the CPU BLAS) in x's dtype with fp32 accumulation",
            ),
        ),
    )
)

"""Which kernels serve each weight format: its reference (the spec) and its fast versions, in order.

A runtime asks once per layer at load: `fast = pick_fast(FORMAT, weight, device, x_dtype)`, keeps
`prepared = fast.prepare(weight)` (on the device; most kernels read the stored tensors as they are)
and calls `fast.matmul(x, prepared, bias)` every step. Where no fast kernel takes the weight it
raises, naming why, rather than falling back silently.
"""

from __future__ import annotations

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


def pick_fast(format: str, weight: Any, device: torch.device | str, x_dtype: torch.dtype) -> FastKernel:
    """The first registered fast kernel that takes this weight on this device, else one clear error."""
    device = torch.device(device)
    reasons = []
    for kernel in kernels_for(format).fast:
        reason = kernel.unsupported(weight, device, x_dtype)
        if reason is None:
            return kernel
        reasons.append(f"{kernel.name}: {reason}")
    raise QuantbenchError(f"no fast kernel for this {format} weight on {device}: " + "; ".join(reasons or ["none registered"]))


# ---------------------------------------------------------------------------------------------------
# The fast kernels.


def _dense_matmul(x, weight, bias=None):
    return torch.nn.functional.linear(x, weight, bias)


def _identity(weight):
    return weight


register(
    FormatKernels(
        format=INT_GROUP,
        reference_dequantize=reference.dequantize_int_group,
        reference_matmul=reference.matmul_int_group,
        fast=(),  # Triton int-group GEMV/GEMM and tinygemm: next commit
    )
)
register(
    FormatKernels(
        format=BNB_4BIT,
        reference_dequantize=reference.dequantize_bnb_4bit,
        reference_matmul=reference.matmul_bnb_4bit,
        fast=(),  # Triton nf4/fp4 GEMV: next commit
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

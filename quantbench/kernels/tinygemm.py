"""Core PyTorch's tinygemm int4 kernel (`torch.ops.aten._weight_int4pack_mm`, CUDA, bf16) for int4
group-wise weights, after a one-time repack of the compressed-tensors layout at load.

tinygemm's layout (REFERENCE.md section 3): `_convert_weight_to_int4pack` takes uint8 (rows, cols/2),
two codes a byte with the EVEN column in the HIGH nibble (gpt-fast's packing), and returns its own
tiled int32 tensor of the same byte count; `scales_and_zeros` is bf16 (groups, rows, 2) with
W = (q - 8) * scale + zero. From the artifact's W = (q - z) * s: scale = s and zero = (8 - z) * s.

Numerics differ from the artifact's: s is rounded to bf16 (fp16 scales keep 3 more bits) and the zero
becomes a rounded bf16 offset, so each weight may move by up to about 2^-8 of its scale times 8-16.
Bytes per group of 128 on a row: stored 64 + 2 (scale) + 0.5 (zero) = 66.5; repacked 64 + 4 = 68 (+2.3%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError
from quantbench.kernels.reference import unpack_codes
from quantbench.kernels.weights import IntGroupWeight

GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm accepts
MIDPOINT = 8  # tinygemm subtracts 8 from every code


@dataclass(frozen=True)
class TinygemmInt4Weight:
    packed: torch.Tensor  # int32, tinygemm's tiled layout (opaque), rows*cols/2 bytes
    scales_and_zeros: torch.Tensor  # bf16 (groups, rows, 2)
    rows: int
    cols: int
    group_size: int

    def resident_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + self.scales_and_zeros.numel() * 2


def unsupported(weight: IntGroupWeight, x_dtype: torch.dtype, inner_k_tiles: int = 8) -> str | None:
    if weight.bits != 4:
        return f"tinygemm is int4 only (this weight is int{weight.bits})"
    if weight.group_size not in GROUP_SIZES:
        return f"tinygemm takes group sizes {GROUP_SIZES}, not {weight.group_size}"
    if weight.cols % (inner_k_tiles * 16) or weight.rows % 8:
        return f"tinygemm needs cols % {inner_k_tiles * 16} == 0 and rows % 8 == 0 (got {weight.rows} x {weight.cols})"
    if x_dtype != torch.bfloat16:
        return f"tinygemm takes bf16 inputs, not {x_dtype}"
    return None


def repack(weight: IntGroupWeight, inner_k_tiles: int = 8, rows_per_step: int = 2048) -> TinygemmInt4Weight:
    """Once at load, on the weight's (CUDA) device. Transient memory: rows_per_step x cols int64 codes."""
    reason = unsupported(weight, torch.bfloat16, inner_k_tiles)
    if reason:
        raise QuantbenchError(reason)
    nibbles = torch.empty(weight.rows, weight.cols // 2, dtype=torch.uint8, device=weight.packed.device)
    for r0 in range(0, weight.rows, rows_per_step):
        q = unpack_codes(weight.packed[r0 : r0 + rows_per_step], 4, weight.cols)  # (rows_per_step, cols)
        nibbles[r0 : r0 + rows_per_step] = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles)
    del nibbles
    z = unpack_codes(weight.zero_point.T.contiguous(), 4, weight.rows).T  # (rows, groups)
    scale = weight.scale.float()  # (rows, groups)
    zero = (MIDPOINT - z).float() * scale
    scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (groups, rows, 2)
    return TinygemmInt4Weight(packed, scales_and_zeros, weight.rows, weight.cols, weight.group_size)


def matmul(x: torch.Tensor, weight: TinygemmInt4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W.T (+ bias): x (..., cols) bf16 -> y (..., rows) bf16."""
    if x.dtype != torch.bfloat16:
        raise QuantbenchError(f"tinygemm takes bf16 inputs, not {x.dtype}")
    y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, weight.cols), weight.packed, weight.group_size, weight.scales_and_zeros)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.rows)

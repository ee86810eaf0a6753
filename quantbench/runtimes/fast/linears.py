"""One stored linear, ready to multiply: the fast runtime's only door to `quantbench.kernels`.

Each class takes a `stored.Packed*` record (already on the device), keeps it packed, and computes
y = x W^T (+ bias) for x (M, cols) in the compute dtype. The kernel used is named in `kernel`, so every
bench row says which code ran; `numerics` says where that differs from what the artifact means.

Until `quantbench.kernels` provides a fused kernel for a format, a linear dequantizes its own weight
transiently for each call (one layer's dense copy at a time: correct, allowed by the memory rule, slow).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantbench.runtimes.fast import stored

INT8_NUMERICS = (
    "weight-only int8: W = int8 * SCB/127 multiplied in the compute dtype; LLM.int8's int8 activations and "
    "fp16 outlier columns (threshold {threshold}) are not reproduced"
)


class Linear:
    kernel = ""
    numerics = "the artifact's own"
    packed = None
    bias: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape

    @property
    def nbytes(self) -> int:
        return stored.stored_nbytes(self.packed) + (0 if self.bias is None else self.bias.nbytes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseLinear(Linear):
    kernel = "cuBLAS (torch.nn.functional.linear)"

    def __init__(self, packed: stored.PackedDense, dtype: torch.dtype, bias: torch.Tensor | None = None):
        self.packed = stored.PackedDense(packed.weight.to(dtype))
        self.bias = bias

    def __call__(self, x):
        return F.linear(x, self.packed.weight, self.bias)


# ---------------------------------------------------------------------------------------------------
# Readable dequantizers (the spec for each stored layout; one layer at a time)


def dequantize_int_grid(p: stored.PackedIntGrid, dtype: torch.dtype) -> torch.Tensor:
    """(rows, cols) W = scale * (q - zero) from the compressed-tensors bit streams."""
    q = unpack_rows(p.weight_packed, p.bits, p.cols)  # (rows, cols) int32
    zero = unpack_rows(p.weight_zero_point.T.contiguous(), p.bits, p.rows).T  # (rows, groups)
    groups = p.cols // p.group_size
    W = (q.view(p.rows, groups, p.group_size) - zero[:, :, None]).to(torch.float32) * p.weight_scale.float()[:, :, None]
    return W.view(p.rows, p.cols).to(dtype)


def unpack_rows(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """(rows, words) int32 bit streams (element i at bits i*bits.., LSB first) -> (rows, n) int32."""
    rows, words = packed.shape
    if 32 % bits == 0:  # whole elements per word: shift and mask
        per_word = 32 // bits
        shifts = torch.arange(per_word, device=packed.device, dtype=torch.int32) * bits
        values = (packed[:, :, None] >> shifts) & (2**bits - 1)  # arithmetic shift: the mask drops sign bits
        return values.reshape(rows, words * per_word)[:, :n]
    # Elements straddle words (3-bit): read each element's two candidate words as one 64-bit window.
    start = torch.arange(n, device=packed.device, dtype=torch.int64) * bits
    word, offset = start // 32, start % 32
    unsigned = packed.to(torch.int64) & 0xFFFFFFFF
    low = unsigned[:, word]
    high = unsigned[:, (word + 1).clamp(max=words - 1)]
    window = low | (high << 32)
    return ((window >> offset) & (2**bits - 1)).to(torch.int32)


def dequantize_bnb4bit(p: stored.PackedBnb4bit, dtype: torch.dtype) -> torch.Tensor:
    """(rows, cols) W: code table lookup times the block's absmax (double quant decoded first)."""
    n = p.rows * p.cols
    high, low = p.codes >> 4, p.codes & 0xF  # first element of each pair in the HIGH nibble
    idx = torch.stack([high, low], dim=1).reshape(-1)[:n].long()
    absmax = bnb_absmax(p)
    W = p.quant_map[idx].view(-1, p.blocksize) * absmax[:, None] if n % p.blocksize == 0 else (
        p.quant_map[idx] * absmax.repeat_interleave(p.blocksize)[:n]
    )
    return W.reshape(p.rows, p.cols).to(dtype)


def bnb_absmax(p: stored.PackedBnb4bit) -> torch.Tensor:
    """fp32 absmax per block; with double quant: nested_map[code] * nested_absmax[block // 256] + offset."""
    if not p.double_quant:
        return p.absmax
    nested = p.nested_absmax.repeat_interleave(p.nested_blocksize)[: p.absmax.numel()]
    return p.nested_quant_map[p.absmax.long()] * nested + p.nested_offset


def dequantize_int8_rows(p: stored.PackedInt8Rows, dtype: torch.dtype) -> torch.Tensor:
    return (p.weight.float() * (p.SCB[:, None] / 127.0)).to(dtype)


class DequantizingLinear(Linear):
    """Dequantizes its whole weight for every call: the reference path (exact, slow)."""

    kernel = "reference: dequantize the layer, then cuBLAS"

    def __init__(self, packed, dtype: torch.dtype, dequantize, bias: torch.Tensor | None = None, numerics: str | None = None):
        self.packed, self.dtype, self._dequantize, self.bias = packed, dtype, dequantize, bias
        if numerics:
            self.numerics = numerics

    def __call__(self, x):
        return F.linear(x, self._dequantize(self.packed, self.dtype), self.bias)


def make_linear(packed, dtype: torch.dtype, bias: torch.Tensor | None = None) -> Linear:
    """The linear for one stored record, with the fastest kernel registered for its format."""
    if isinstance(packed, stored.PackedDense):
        return DenseLinear(packed, dtype, bias)
    if isinstance(packed, stored.PackedIntGrid):
        return DequantizingLinear(packed, dtype, dequantize_int_grid, bias)
    if isinstance(packed, stored.PackedBnb4bit):
        return DequantizingLinear(packed, dtype, dequantize_bnb4bit, bias)
    if isinstance(packed, stored.PackedInt8Rows):
        return DequantizingLinear(packed, dtype, dequantize_int8_rows, bias, INT8_NUMERICS.format(threshold=packed.threshold))
    raise TypeError(f"no linear for {type(packed).__name__}")

"""Pure-PyTorch dequantize + matmul for every weight format quantbench writes: the executable spec.

Readable, not fast: each function says in a few lines what the stored bytes mean. The fast kernels
beside this file are tested against these, and these against independent oracles (bitsandbytes' own
dequantizers, compressed-tensors' decompressor) in tests/test_kernels.py.

Conventions (STYLE.md): compute in fp32 (float64 where an exact integer sum needs it), return in the
input's dtype; the device comes from the tensors. Every matmul is y = x @ W.T (+ bias) with x of shape
(..., cols) and y of shape (..., rows).
"""

from __future__ import annotations

import torch

from quantbench.kernels.weights import Bnb4bitWeight, BnbInt8Weight, IntGroupWeight

INT8_MAX = 127  # LLM.int8 quantizes rows and columns to [-127, 127]


# ---------------------------------------------------------------------------------------------------
# compressed-tensors pack-quantized, group-wise int2/int3/int4/int8


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """(rows, words) int32 dense bit streams -> (rows, n) int64 codes in [0, 2^bits).

    Element i of a row starts at bit i*bits of the row (word i*bits // 32, bit i*bits % 32, LSB
    first) and may run on into the next word; reading a 64-bit window of two words covers both."""
    words = packed.to(torch.int64) & 0xFFFFFFFF  # the stored bits, as unsigned 32-bit values
    first_bit = torch.arange(n, device=packed.device) * bits
    word = first_bit // 32
    low = words[:, word]
    high = words[:, (word + 1).clamp(max=words.shape[1] - 1)]  # only read when an element straddles
    window = low | (high << 32)
    return (window >> (first_bit % 32)) & ((1 << bits) - 1)


def int_group_codes(weight: IntGroupWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, z): the codes (rows, cols) and zero points (rows, groups), both int64."""
    q = unpack_codes(weight.packed, weight.bits, weight.cols)
    z = unpack_codes(weight.zero_point.T.contiguous(), weight.bits, weight.rows).T  # packed down the rows
    return q, z


def dequantize_int_group(weight: IntGroupWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W (rows, cols) = (q - z) * scale per group, in fp32, then cast to `dtype`."""
    q, z = int_group_codes(weight)
    z = z.repeat_interleave(weight.group_size, dim=1)  # (rows, cols)
    scale = weight.scale.float().repeat_interleave(weight.group_size, dim=1)  # (rows, cols)
    return ((q - z).float() * scale).to(dtype)


def matmul_int_group(x: torch.Tensor, weight: IntGroupWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _linear_fp32(x, dequantize_int_group(weight), bias)


# ---------------------------------------------------------------------------------------------------
# bitsandbytes 4-bit: nf4 / fp4, optional double quant


def bnb_4bit_codes(weight: Bnb4bitWeight) -> torch.Tensor:
    """The n = rows*cols codes in flat order: byte j holds code 2j in its high nibble, 2j+1 in its low."""
    packed = weight.packed.reshape(-1)
    codes = torch.stack((packed >> 4, packed & 0xF), dim=1).reshape(-1)  # (2 * bytes,)
    return codes[: weight.rows * weight.cols].long()


def bnb_4bit_absmax(weight: Bnb4bitWeight) -> torch.Tensor:
    """fp32 absmax per block of `blocksize` values; with double quant, dequantized from its uint8 codes
    as bitsandbytes' dequantize_blockwise does: nested_code[code] * nested_absmax[block // 256] + offset."""
    if not weight.double_quant:
        return weight.absmax
    blocks = weight.absmax.numel()
    nested_absmax = weight.nested_absmax.repeat_interleave(weight.nested_blocksize)[:blocks]
    return weight.nested_code[weight.absmax.long()] * nested_absmax + weight.nested_offset


def dequantize_bnb_4bit(weight: Bnb4bitWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W (rows, cols): code table value * its block's absmax, in fp32, then cast to `dtype`."""
    n = weight.rows * weight.cols
    values = weight.code[bnb_4bit_codes(weight)]  # (n,) fp32
    absmax = bnb_4bit_absmax(weight).repeat_interleave(weight.blocksize)[:n]  # blocks run over the flat weight
    return (values * absmax).reshape(weight.rows, weight.cols).to(dtype)


def matmul_bnb_4bit(x: torch.Tensor, weight: Bnb4bitWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _linear_fp32(x, dequantize_bnb_4bit(weight), bias)


# ---------------------------------------------------------------------------------------------------
# bitsandbytes LLM.int8 (Dettmers et al. 2022, arXiv 2208.07339)


def dequantize_bnb_int8(weight: BnbInt8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W (rows, cols) = weight * SCB / 127 per row, in fp32 with bitsandbytes' operation order
    (int8_vectorwise_dequant: weight * SCB, then times the fp32 reciprocal of 127), cast to `dtype`."""
    return (weight.weight.float() * weight.scb[:, None] * (1.0 / INT8_MAX)).to(dtype)


def matmul_bnb_int8(x: torch.Tensor, weight: BnbInt8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8's mixed-precision decomposition, as bitsandbytes 0.50.2 runs it at inference
    (autograd._functions.MatMul8bitLt.forward with int8_vectorwise_quant and int8_mixed_scaled_mm):

    1. The input, cast to fp16, has outliers |x| >= threshold; a column holding any outlier is an
       outlier column (the set is per call, over all rows of x).
    2. Inlier part: outlier entries set to 0, each row of x quantized to int8 by its absmax
       (round(x * 127 / absmax)), outlier columns zeroed; int8 x int8 summed exactly (int32 in
       bitsandbytes' CUDA kernel; float64 here, exact for any realistic width), dequantized by
       absmax_row(x) * SCB / 127^2 in fp32, bias added in fp32, cast to x's dtype.
    3. Outlier part: x[:, outlier columns] in x's own dtype times those weight columns dequantized
       (weight * SCB / 127) and cast to x's dtype, added to the result in x's dtype.

    Differences from bitsandbytes' own CPU path, each below the output's bf16 rounding: its CPU int8
    matmul sums in fp32 (inexact beyond 2^24) and dequantizes with the constant 6.200124e-05 (1/127^2
    is 6.2000124e-05; its CUDA kernel uses 6.200012e-05); here the sum is exact and the factor is
    1/127^2. A row of x that is all zero (or all outliers) quantizes to zeros here, where
    bitsandbytes divides by a zero absmax."""
    cols = weight.cols
    x2 = x.reshape(-1, cols)  # (tokens, cols)
    A = x2.to(torch.float16)  # bitsandbytes quantizes the input in fp16
    outlier_cols = torch.empty(0, dtype=torch.long, device=x.device)
    if weight.threshold > 0:
        outliers = A.abs() >= weight.threshold  # (tokens, cols)
        outlier_cols = outliers.any(dim=0).nonzero().reshape(-1)
        A = A.masked_fill(outliers, 0)
    row_absmax = A.abs().amax(dim=1).float()  # (tokens,)  bitsandbytes' SCA
    inverse = torch.where(row_absmax > 0, INT8_MAX / row_absmax, torch.zeros_like(row_absmax))
    CA = torch.round(A.float() * inverse[:, None]).to(torch.int8)  # (tokens, cols)
    CA[:, outlier_cols] = 0

    acc = CA.double() @ weight.weight.double().T  # (tokens, rows), an exact integer sum
    out = acc.float() * (row_absmax[:, None] * weight.scb[None, :]) * (1.0 / (INT8_MAX * INT8_MAX))
    if bias is not None:
        out = out + bias.float()
    out = out.to(x.dtype)
    if outlier_cols.numel():
        sub_x = x2[:, outlier_cols]  # (tokens, outliers) in x's dtype
        sub_W = dequantize_bnb_int8(BnbInt8Weight(weight.weight[:, outlier_cols].contiguous(), weight.scb, weight.threshold), x.dtype)
        out = (out.float() + sub_x.float() @ sub_W.float().T).to(x.dtype)
    return out.reshape(*x.shape[:-1], weight.rows)


# ---------------------------------------------------------------------------------------------------
# bf16 / fp16 plain


def matmul_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A plain (rows, cols) weight, in fp32."""
    return _linear_fp32(x, weight, bias)


def _linear_fp32(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.float() @ W.float().T  # (..., rows)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)

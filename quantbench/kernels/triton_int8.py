"""LLM.int8 (bitsandbytes int8 + SCB, outlier threshold) in two Triton kernels, read as stored.

The algorithm is reference.matmul_bnb_int8's, with one stated difference; the steps:

1. `_prepare_kernel` (one program; the input is small at decode batch sizes): x cast to fp16, entries
   with |x| >= threshold are outliers and their columns outlier columns; each row's absmax over the
   inliers; CA = round(x * 127 / absmax) as int8 with outlier columns zeroed; XO = x on the outlier
   columns and 0 elsewhere (x's dtype). No data-dependent shapes, so a CUDA graph can replay it.
2. `_matmul_kernel`: per weight tile, the int8 x int8 product on the tensor cores with exact int32
   accumulation, dequantized by absmax_row * SCB / 127^2 in fp32, bias added, cast to x's dtype; and,
   only for tiles whose XO is not all zero, XO times the int8 weight columns (exact in bf16/fp16)
   accumulated in fp32, times SCB / 127, added in fp32 to the cast int8 part and cast again.

Difference from bitsandbytes (and the reference): bitsandbytes rounds the dequantized outlier weight
columns (weight * SCB / 127) to x's dtype before multiplying; here they are multiplied exactly and
scaled after the sum. The outlier part therefore differs by at most bf16 rounding of those weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.errors import QuantbenchError
from quantbench.kernels.weights import BnbInt8Weight

INT8_MAX = 127


@triton.jit
def _prepare_kernel(
    x_ptr, ca_ptr, xo_ptr, absmax_ptr, M, K, threshold,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, STEPS: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
):  # fmt: skip
    tokens = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    absmax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for step in range(0, STEPS):  # pass 1: each row's absmax over its inliers
        k = step * BLOCK_K + cols
        mask = (tokens[:, None] < M) & (k[None, :] < K)
        a = tl.abs(tl.load(x_ptr + tokens[:, None] * K + k[None, :], mask=mask, other=0.0).to(tl.float16).to(tl.float32))
        if HAS_THRESHOLD:
            a = tl.where(a >= threshold, 0.0, a)
        absmax = tl.maximum(absmax, tl.max(a, axis=1))
    tl.store(absmax_ptr + tokens, absmax, mask=tokens < M)
    inverse = tl.where(absmax > 0, 127.0 / absmax, 0.0)
    for step in range(0, STEPS):  # pass 2: int8 codes of the inliers, the outlier columns kept apart
        k = step * BLOCK_K + cols
        mask = (tokens[:, None] < M) & (k[None, :] < K)
        x = tl.load(x_ptr + tokens[:, None] * K + k[None, :], mask=mask, other=0.0)
        a = x.to(tl.float16).to(tl.float32)
        if HAS_THRESHOLD:
            outlier_col = tl.max((tl.abs(a) >= threshold).to(tl.int32), axis=0) > 0  # (BLOCK_K,)
        else:
            outlier_col = k < 0
        ca = tl.where(outlier_col[None, :], 0.0, _round_half_even(a * inverse[:, None]))
        tl.store(ca_ptr + tokens[:, None] * K + k[None, :], ca.to(tl.int8), mask=mask)
        tl.store(xo_ptr + tokens[:, None] * K + k[None, :], tl.where(outlier_col[None, :], x, 0.0).to(x.dtype), mask=mask)


@triton.jit
def _round_half_even(v):
    """Round half to even, as torch.round: floor(v + 0.5) with ties sent to the even neighbour."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _matmul_kernel(
    ca_ptr, xo_ptr, absmax_ptr, w_ptr, scb_ptr, bias_ptr, out_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STEPS: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)
    tokens = tl.arange(0, BLOCK_M)
    tokens_safe = tl.minimum(tokens, M - 1)
    cols = tl.arange(0, BLOCK_K)
    acc_int = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_outlier = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, STEPS):
        k = step * BLOCK_K + cols
        k_ok = k < K
        k_safe = tl.minimum(k, K - 1)
        W = tl.load(w_ptr + rows_safe[:, None].to(tl.int64) * K + k_safe[None, :])  # (BLOCK_N, BLOCK_K) int8
        W = tl.where(k_ok[None, :], W, 0)
        ca = tl.load(ca_ptr + tokens_safe[:, None] * K + k_safe[None, :])
        ca = tl.where(k_ok[None, :], ca, 0)
        acc_int += tl.dot(ca, tl.trans(W), out_dtype=tl.int32)  # exact
        xo = tl.load(xo_ptr + tokens_safe[:, None] * K + k_safe[None, :])
        xo = tl.where(k_ok[None, :], xo, 0.0)
        if tl.max(tl.max(tl.abs(xo.to(tl.float32)), axis=1), axis=0) > 0:  # only tiles holding outlier columns
            acc_outlier += tl.dot(xo, tl.trans(W.to(xo.dtype)))
    absmax = tl.load(absmax_ptr + tokens_safe)  # (BLOCK_M,)
    scb = tl.load(scb_ptr + rows_safe)  # (BLOCK_N,)
    y = acc_int.to(tl.float32) * (absmax[:, None] * scb[None, :]) * (1.0 / (127.0 * 127.0))
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows_safe).to(tl.float32)[None, :]
    y = y.to(out_ptr.dtype.element_ty).to(tl.float32) + acc_outlier * (scb[None, :] * (1.0 / 127.0))
    out = out_ptr + tokens[:, None] * N + rows[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(tokens[:, None] < M) & (rows[None, :] < N))


MAX_TOKENS = 64  # one program prepares the whole input; decode batches are far smaller


def matmul(x: torch.Tensor, weight: BnbInt8Weight, bias: torch.Tensor | None = None, block_n: int = 64, block_k: int = 128, num_warps: int = 4) -> torch.Tensor:
    """y = LLM.int8(x, W) (+ bias): x (..., cols) fp16/bf16 -> y (..., rows) in x's dtype."""
    if x.shape[-1] != weight.cols:
        raise QuantbenchError(f"x has {x.shape[-1]} columns, the weight {weight.cols}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise QuantbenchError(f"LLM.int8 takes fp16/bf16 inputs, not {x.dtype}")
    x2 = x.reshape(-1, weight.cols).contiguous()
    M, N, K = x2.shape[0], weight.rows, weight.cols
    if M > MAX_TOKENS:
        raise QuantbenchError(f"the Triton LLM.int8 path takes at most {MAX_TOKENS} tokens at once (got {M}); use reference.matmul_bnb_int8")
    block_m = max(16, triton.next_power_of_2(M))
    ca = torch.empty(M, K, dtype=torch.int8, device=x.device)
    xo = torch.empty(M, K, dtype=x.dtype, device=x.device)
    absmax = torch.empty(M, dtype=torch.float32, device=x.device)
    prep_k = 256 if block_m <= 16 else 64
    _prepare_kernel[(1,)](
        x2, ca, xo, absmax, M, K, float(weight.threshold),
        BLOCK_M=block_m, BLOCK_K=prep_k, STEPS=triton.cdiv(K, prep_k), HAS_THRESHOLD=weight.threshold > 0,
    )  # fmt: skip
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _matmul_kernel[(triton.cdiv(N, block_n),)](
        ca, xo, absmax, weight.weight, weight.scb, bias if bias is not None else absmax, out, M, N, K,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, STEPS=triton.cdiv(K, block_k), HAS_BIAS=bias is not None,
        num_warps=num_warps,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], N)

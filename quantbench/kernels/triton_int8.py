"""LLM.int8 (bitsandbytes int8 + SCB, outlier threshold) in two Triton kernels, read as stored.

The algorithm is reference.matmul_bnb_int8's, with one stated difference; the steps:

1. `_scan_kernel`, one program per BLOCK_K columns of the input: x cast to fp16, entries with
   |x| >= threshold are outliers and their columns outlier columns; it writes a flag per column, a
   flag per column block (any outlier column in it), and each row's absmax over the inliers of its
   block. No data-dependent shapes, so a CUDA graph can replay it.
2. `_matmul_kernel`, one program per BLOCK_N weight rows: each row's absmax is the max of the block
   maxima; per column block, the inliers are quantized to int8 (round(x * 127 / absmax), outlier
   columns zeroed) and multiplied with the int8 weight on the tensor cores, summed exactly in int32,
   dequantized by absmax_row * SCB / 127^2 in fp32, bias added, cast to x's dtype; only blocks
   flagged in step 1 also multiply x on the outlier columns (0 elsewhere) with the int8 weight
   (exact in bf16/fp16), summed in fp32, times SCB / 127, added to the cast int8 part and cast again.

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
def _round_half_even(v):
    """As torch.round: floor(v + 0.5), with exact ties sent to the even neighbour."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _scan_kernel(
    x_ptr, col_flag_ptr, block_flag_ptr, block_max_ptr, M, K, threshold,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    tokens = tl.arange(0, BLOCK_M)
    k = block * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (tokens[:, None] < M) & (k[None, :] < K)
    a = tl.abs(tl.load(x_ptr + tokens[:, None] * K + k[None, :], mask=mask, other=0.0).to(tl.float16).to(tl.float32))
    if HAS_THRESHOLD:
        outlier = a >= threshold  # (BLOCK_M, BLOCK_K)
        col_flag = tl.max(outlier.to(tl.int32), axis=0)  # (BLOCK_K,)
        a = tl.where(outlier, 0.0, a)
    else:
        col_flag = tl.zeros((BLOCK_K,), dtype=tl.int32)
    tl.store(col_flag_ptr + k, col_flag.to(tl.int8), mask=k < K)
    tl.store(block_flag_ptr + block, tl.max(col_flag, axis=0))
    tl.store(block_max_ptr + block * BLOCK_M + tokens, tl.max(a, axis=1))


@triton.jit
def _matmul_kernel(
    x_ptr, col_flag_ptr, block_flag_ptr, block_max_ptr, w_ptr, scb_ptr, bias_ptr, out_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STEPS: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)
    tokens = tl.arange(0, BLOCK_M)
    tokens_safe = tl.minimum(tokens, M - 1)
    cols = tl.arange(0, BLOCK_K)
    absmax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for step in range(0, STEPS):
        absmax = tl.maximum(absmax, tl.load(block_max_ptr + step * BLOCK_M + tokens))
    inverse = tl.where(absmax > 0, 127.0 / absmax, 0.0)
    acc_int = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_outlier = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, STEPS):
        # (masks, not clamped indices, past the row's end: a clamp hides contiguity and unvectorizes the loads)
        k = step * BLOCK_K + cols
        k_ok = k < K
        W = tl.load(w_ptr + rows_safe[:, None].to(tl.int64) * K + k[None, :], mask=k_ok[None, :], other=0)  # (BLOCK_N, BLOCK_K) int8
        x = tl.load(x_ptr + tokens_safe[:, None] * K + k[None, :], mask=k_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        outlier_col = tl.load(col_flag_ptr + k, mask=k_ok, other=1) != 0
        ca = tl.where(outlier_col[None, :], 0.0, _round_half_even(x.to(tl.float16).to(tl.float32) * inverse[:, None]))
        acc_int += tl.dot(ca.to(tl.int8), tl.trans(W), out_dtype=tl.int32)  # exact
        if tl.load(block_flag_ptr + step) != 0:  # only blocks holding outlier columns
            xo = tl.where(outlier_col[None, :] & k_ok[None, :], x, 0.0).to(x.dtype)
            acc_outlier += tl.dot(xo, tl.trans(W.to(x.dtype)))
    scb = tl.load(scb_ptr + rows_safe)  # (BLOCK_N,)
    y = acc_int.to(tl.float32) * (absmax[:, None] * scb[None, :]) * (1.0 / (127.0 * 127.0))
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows_safe).to(tl.float32)[None, :]
    y = y.to(out_ptr.dtype.element_ty).to(tl.float32) + acc_outlier * (scb[None, :] * (1.0 / 127.0))
    out = out_ptr + tokens[:, None] * N + rows[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(tokens[:, None] < M) & (rows[None, :] < N))


MAX_TOKENS = 64  # one program prepares the whole input; decode batches are far smaller


def matmul(x: torch.Tensor, weight: BnbInt8Weight, bias: torch.Tensor | None = None, block_n: int = 32, block_k: int = 128, num_warps: int = 4) -> torch.Tensor:
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
    blocks = triton.cdiv(K, block_k)
    col_flag = torch.empty(K, dtype=torch.int8, device=x.device)
    block_flag = torch.empty(blocks, dtype=torch.int32, device=x.device)
    block_max = torch.empty(blocks, block_m, dtype=torch.float32, device=x.device)
    _scan_kernel[(blocks,)](
        x2, col_flag, block_flag, block_max, M, K, float(weight.threshold),
        BLOCK_M=block_m, BLOCK_K=block_k, HAS_THRESHOLD=weight.threshold > 0,
    )  # fmt: skip
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _matmul_kernel[(triton.cdiv(N, block_n),)](
        x2, col_flag, block_flag, block_max, weight.weight, weight.scb, bias if bias is not None else block_max, out, M, N, K,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, STEPS=blocks, HAS_BIAS=bias is not None,
        num_warps=num_warps,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], N)

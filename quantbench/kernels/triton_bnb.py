"""Triton kernels for bitsandbytes nf4 / fp4 weights (with or without double quant), read as stored.

Two paths, chosen by shape:

- Row-aligned (cols % blocksize == 0 and cols % 8 == 0; every Llama-family linear): the packed bytes
  of a row are read as int32 words, 8 codes each. In a little-endian word, byte b holds codes 2b
  (high nibble) and 2b+1 (low nibble), so code j sits at bit 8*(j//2) + (4 if j is even else 0):

      bit:  31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
            c[6]   c[7]   c[4]   c[5]   c[2]   c[3]   c[0]   c[1]

  Batch 1 is a GEMV summing code_table[c] * x per (row, word) in fp32 and scaling by the word's block
  absmax (exact fp32 weights; only the summation order differs from the reference). Batch > 1 rounds
  each weight code_table[c] * absmax to x's dtype (what bitsandbytes' own matmul_4bit multiplies) and
  feeds tl.dot with fp32 accumulation.
- Any other shape (blocks run across row ends): a generic tile kernel indexes every element by its
  flat position; exact fp32 weights and fp32 dot. Slow, for odd shapes only.

Double quant: a block's absmax is nested_code[absmax_code] * nested_absmax[block // 256] + offset,
computed in fp32 with the multiply and add rounded separately (no fused multiply-add), as
bitsandbytes' dequantize_blockwise does. The code table is read from the artifact (`quant_map`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from quantbench.errors import QuantbenchError
from quantbench.kernels.triton_int import store_tile
from quantbench.kernels.weights import Bnb4bitWeight

CODES_PER_WORD = 8


@dataclass(frozen=True)
class GemvConfig:  # the faster of the two measured on the H200 (benchmarks/RESULTS.md)
    block_n: int = 64
    block_words: int = 16  # words (8 codes each) per row per step
    split_k: int = 4
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 16
    block_n: int = 64
    block_words: int = 16  # tl.dot's K per code position (>= 16)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


def row_aligned(weight: Bnb4bitWeight) -> bool:
    return weight.cols % weight.blocksize == 0 and weight.cols % CODES_PER_WORD == 0


@triton.jit
def _absmax(absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, block, valid, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr):
    """fp32 absmax of `block` (any shape of block indices); 0 where not `valid`."""
    if NESTED:
        code = tl.load(absmax_ptr + block, mask=valid, other=0).to(tl.int32)
        scaled = tl.load(nested_code_ptr + code) * tl.load(nested_absmax_ptr + block // NESTED_BLOCKSIZE, mask=valid, other=0.0)
        return tl.where(valid, scaled + tl.load(offset_ptr), 0.0)
    else:
        return tl.load(absmax_ptr + block, mask=valid, other=0.0)


@triton.jit
def _word_code(word, J: tl.constexpr):
    """Code J (0..7) of an int32 word of 4 packed bytes, first code of each byte in its high nibble."""
    SHIFT: tl.constexpr = 8 * (J // 2) + 4 * (1 - J % 2)
    return (word >> SHIFT) & 0xF


@triton.jit
def _gemv_kernel(
    x_ptr, words_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, bias_ptr, out_ptr,
    N, K,
    BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_WORDS: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    STEPS_PER_SPLIT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)
    words = tl.arange(0, BLOCK_WORDS)
    row_words = K // 8
    total_words = row_words  # per row
    acc = tl.zeros((BLOCK_N, BLOCK_WORDS), dtype=tl.float32)
    for step in range(0, STEPS_PER_SPLIT):
        # (masks, not clamped indices, past the row's end: a clamp hides contiguity and unvectorizes the loads)
        word = (pid_k * STEPS_PER_SPLIT + step) * BLOCK_WORDS + words  # (BLOCK_WORDS,) index in the row
        live = word < total_words
        w = tl.load(words_ptr + rows_safe[:, None].to(tl.int64) * row_words + word[None, :], mask=live[None, :], other=0)
        block = rows_safe[:, None] * (K // BLOCKSIZE) + (word * 8 // BLOCKSIZE)[None, :]
        absmax = _absmax(absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, block, live[None, :], NESTED, NESTED_BLOCKSIZE)
        part = tl.zeros((BLOCK_N, BLOCK_WORDS), dtype=tl.float32)
        for j in tl.static_range(8):
            x = tl.load(x_ptr + word * 8 + j, mask=live, other=0.0).to(tl.float32)  # (BLOCK_WORDS,)
            part += tl.load(code_ptr + _word_code(w, j)) * x[None, :]
        acc += part * absmax
    y = tl.sum(acc, axis=1)
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows_safe).to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)
    else:
        tl.atomic_add(out_ptr + rows, y, mask=rows < N)


@triton.jit
def _gemm_kernel(
    x_ptr, words_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_WORDS: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, FP32_DOT: tl.constexpr, STEPS_PER_SPLIT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)
    tokens = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tokens_safe = tl.minimum(tokens, M - 1)
    words = tl.arange(0, BLOCK_WORDS)
    row_words = K // 8
    x_rows = x_ptr + tokens_safe[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, STEPS_PER_SPLIT):
        word = (pid_k * STEPS_PER_SPLIT + step) * BLOCK_WORDS + words
        live = word < row_words
        w = tl.load(words_ptr + rows_safe[:, None].to(tl.int64) * row_words + word[None, :], mask=live[None, :], other=0)
        block = rows_safe[:, None] * (K // BLOCKSIZE) + (word * 8 // BLOCKSIZE)[None, :]
        absmax = _absmax(absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, block, live[None, :], NESTED, NESTED_BLOCKSIZE)
        for j in tl.static_range(8):
            W = tl.load(code_ptr + _word_code(w, j)) * absmax  # (BLOCK_N, BLOCK_WORDS) fp32
            x = tl.load(x_rows + (word * 8 + j)[None, :], mask=live[None, :], other=0.0)  # (BLOCK_M, BLOCK_WORDS)
            if FP32_DOT:
                acc += tl.dot(x, tl.trans(W), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(W.to(x.dtype)))
    store_tile(acc, out_ptr, bias_ptr, tokens, rows, M, N, stride_om, HAS_BIAS, SPLIT_K)


@triton.jit
def _flat_weights(packed_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, flat, valid,
                  BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr):  # fmt: skip
    """fp32 weights at flat positions `flat` (int64, any shape); 0 where not `valid`."""
    flat = tl.where(valid, flat, 0)
    byte = tl.load(packed_ptr + flat // 2).to(tl.int32)
    code = (byte >> ((1 - flat % 2) * 4).to(tl.int32)) & 0xF  # even position: high nibble
    absmax = _absmax(absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, flat // BLOCKSIZE, valid, NESTED, NESTED_BLOCKSIZE)
    return tl.where(valid, tl.load(code_ptr + code) * absmax, 0.0)


@triton.jit
def _generic_kernel(
    x_ptr, packed_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, STEPS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tokens = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, STEPS):
        k = step * BLOCK_K + cols
        valid = (rows[:, None] < N) & (k[None, :] < K)
        flat = rows[:, None].to(tl.int64) * K + k[None, :]
        W = _flat_weights(packed_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, flat, valid, BLOCKSIZE, NESTED, NESTED_BLOCKSIZE)
        x_mask = (tokens[:, None] < M) & (k[None, :] < K)
        x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_xm + k[None, :], mask=x_mask, other=0.0).to(tl.float32)
        acc += tl.dot(x, tl.trans(W), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + tokens[:, None].to(tl.int64) * stride_om + rows[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(tokens[:, None] < M) & (rows[None, :] < N))


@triton.jit
def _dequantize_kernel(
    packed_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, out_ptr, n,
    BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    flat = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = flat < n
    W = _flat_weights(packed_ptr, code_ptr, absmax_ptr, nested_absmax_ptr, nested_code_ptr, offset_ptr, flat, valid, BLOCKSIZE, NESTED, NESTED_BLOCKSIZE)
    tl.store(out_ptr + flat, W.to(out_ptr.dtype.element_ty), mask=valid)


def _state(weight: Bnb4bitWeight) -> tuple:
    """(absmax, nested_absmax, nested_code, offset) pointers; unused ones point at absmax."""
    if weight.double_quant:
        return weight.absmax, weight.nested_absmax, weight.nested_code, weight.nested_offset.reshape(1).float()
    return weight.absmax, weight.absmax, weight.absmax, weight.absmax


def matmul(
    x: torch.Tensor,
    weight: Bnb4bitWeight,
    bias: torch.Tensor | None = None,
    gemv: GemvConfig | None = None,
    gemm: GemmConfig | None = None,
) -> torch.Tensor:
    """y = x @ W.T (+ bias): x (..., cols) fp16/bf16/fp32 -> y (..., rows) in x's dtype."""
    if x.shape[-1] != weight.cols:
        raise QuantbenchError(f"x has {x.shape[-1]} columns, the weight {weight.cols}")
    x2 = x.reshape(-1, weight.cols).contiguous()
    M, N, K = x2.shape[0], weight.rows, weight.cols
    state = _state(weight)
    bias_arg = bias if bias is not None else x2
    meta = dict(BLOCKSIZE=weight.blocksize, NESTED=weight.double_quant, NESTED_BLOCKSIZE=weight.nested_blocksize)
    if not row_aligned(weight):
        out = torch.empty(M, N, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(N, 32), triton.cdiv(M, 16))
        _generic_kernel[grid](
            x2, weight.packed, weight.code, *state, bias_arg, out, M, N, K, x2.stride(0), out.stride(0), **meta,
            BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, HAS_BIAS=bias is not None, STEPS=triton.cdiv(K, 32),
        )  # fmt: skip
        return out.reshape(*x.shape[:-1], N)
    words = weight.packed.reshape(-1).view(torch.int32)  # rows * cols/8 words, row-major
    row_words = K // CODES_PER_WORD
    if M == 1:
        cfg = gemv or GemvConfig()
        out = torch.empty(N, dtype=x.dtype, device=x.device) if cfg.split_k == 1 else torch.zeros(N, dtype=torch.float32, device=x.device)
        _gemv_kernel[(triton.cdiv(N, cfg.block_n), cfg.split_k)](
            x2, words, weight.code, *state, bias_arg, out, N, K, **meta,
            BLOCK_N=cfg.block_n, BLOCK_WORDS=cfg.block_words, SPLIT_K=cfg.split_k, HAS_BIAS=bias is not None,
            STEPS_PER_SPLIT=triton.cdiv(triton.cdiv(row_words, cfg.block_words), cfg.split_k),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    else:
        cfg = gemm or GemmConfig()
        out = torch.empty(M, N, dtype=x.dtype, device=x.device) if cfg.split_k == 1 else torch.zeros(M, N, dtype=torch.float32, device=x.device)
        _gemm_kernel[(triton.cdiv(N, cfg.block_n), triton.cdiv(M, cfg.block_m), cfg.split_k)](
            x2, words, weight.code, *state, bias_arg, out, M, N, K, x2.stride(0), out.stride(0), **meta,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_WORDS=cfg.block_words, SPLIT_K=cfg.split_k,
            HAS_BIAS=bias is not None, FP32_DOT=x.dtype == torch.float32,
            STEPS_PER_SPLIT=triton.cdiv(triton.cdiv(row_words, cfg.block_words), cfg.split_k),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    if out.dtype != x.dtype:
        if bias is not None:
            out += bias.float()
        out = out.to(x.dtype)
    return out.reshape(*x.shape[:-1], N)


def dequantize(weight: Bnb4bitWeight, dtype: torch.dtype = torch.float32, block: int = 1024) -> torch.Tensor:
    """W (rows, cols) in `dtype`, bit-exact with reference.dequantize_bnb_4bit."""
    n = weight.rows * weight.cols
    out = torch.empty(weight.rows, weight.cols, dtype=dtype, device=weight.packed.device)
    _dequantize_kernel[(triton.cdiv(n, block),)](
        weight.packed.reshape(-1), weight.code, *_state(weight), out, n,
        BLOCKSIZE=weight.blocksize, NESTED=weight.double_quant, NESTED_BLOCKSIZE=weight.nested_blocksize, BLOCK=block,
        enable_fp_fusion=False,  # multiply and add of the nested absmax rounded separately, as bitsandbytes does
    )  # fmt: skip
    return out

"""Triton kernels for compressed-tensors int2/int3/int4/int8 group-wise weights, read as stored.

The packed words are dequantized in registers; nothing is repacked. The bit stream of a row is read
in UNITS: the fewest whole int32 words that hold a whole number of codes (one word = 16 / 8 / 4 codes
for 2 / 4 / 8 bits; three words = 32 codes for 3 bits). Code j of a unit sits at the fixed bit
offset j*bits, so the kernels unroll over j with shifts known at compile time. A unit never straddles
a group when group_size is a multiple of its codes (checked by `unsupported`).

Each code becomes a float without an int->float conversion (which runs at a quarter of the fp32 rate
on NVIDIA GPUs): OR-ing q < 2^23 into the mantissa of 2^23 (bits 0x4B000000) gives the float 2^23 + q;
subtracting 2^23 + z then leaves q - z exactly. For 2/4/8 bits the code is not even shifted down: in
its 16-bit half of the word it sits at bit P, is masked in place (one LOP3 with the OR), and the zero
point and x (or the scale) carry the factor 2^P instead, exactly.

- `matmul`, batch 1: a GEMV; each program owns `block_n` rows and a slice of the columns (split-K,
  partials summed with fp32 atomics), walks them one chunk of at most one group at a time with the
  next chunk's loads issued a step ahead, and sums (q - z) * x per (row, unit) in fp32, times the
  group's scale. The weights are multiplied exactly; only the summation order differs from the
  reference.
- `matmul`, batch > 1 (or a GemmConfig given): per chunk (one group), the (rows, chunk) tile is
  dequantized to x's dtype (as `dequantize(weight, x.dtype)` rounds it), put back in column order with
  tl.interleave, and fed to one tl.dot with fp32 accumulation.
- `dequantize`: the whole (rows, cols) weight, bit-exact with reference.dequantize_int_group.

Default configurations come from the H200 sweep recorded in benchmarks/RESULTS.md ("kernels" section).

The file is long (about 480 lines) on purpose: the three kernels share the jit helpers that decode a
unit of codes, so the bit tricks above are written once, next to every kernel that relies on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from quantbench.errors import QuantbenchError
from quantbench.kernels.weights import IntGroupWeight

MAGIC = 0x4B000000  # the bits of 2^23 as an fp32


def unit_shape(bits: int) -> tuple[int, int]:
    """(words, codes) of the smallest whole-word unit of the bit stream."""
    return (3, 32) if bits == 3 else (1, 32 // bits)


def unsupported(weight: IntGroupWeight) -> str | None:
    _, codes = unit_shape(weight.bits)
    if weight.group_size % codes:
        return f"group size {weight.group_size} is not a multiple of {codes} ({weight.bits}-bit codes per packed unit)"
    return None


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 64  # rows per program
    split_k: int = 8  # programs along the columns; > 1 sums their partials with fp32 atomics
    max_chunk: int = 128  # columns per step (within one group)
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 16  # batch rows per program (tl.dot needs >= 16)
    block_n: int = 64
    split_k: int = 4
    max_chunk: int = 128  # columns per step and tl.dot (within one group)
    num_warps: int = 4
    num_stages: int = 3


# Chosen from the H200 sweep in benchmarks/RESULTS.md ("kernels" section; Llama-3.1-8B shapes, int4
# g128): batch 1 ran best with 64 rows a program and the columns split 8 ways (32% of copy bandwidth
# on 4096x14336 and 14336x4096); batch 8 with 16 x 64 tiles split 4 ways; batch 32 with 32 x 64.
# Splitting is capped so that each split keeps at least 4 steps.
TARGET_PROGRAMS = 1792  # 64-row blocks x 8 splits on a 14336-row weight: about 14 programs per SM on 132 SMs


def default_gemv(rows: int, chunks: int) -> GemvConfig:
    blocks = -(-rows // 64)
    split = max(1, min(8, -(-TARGET_PROGRAMS // blocks), chunks // 4))
    return GemvConfig(block_n=64, split_k=split)


def default_gemm(tokens: int, chunks: int) -> GemmConfig:
    return GemmConfig(block_m=16 if tokens <= 16 else 32, block_n=64, split_k=max(1, min(4, chunks // 4)))


# ---------------------------------------------------------------------------------------------------
# shared pieces


@triton.jit
def _code(w0, w1, w2, J: tl.constexpr, BITS: tl.constexpr):
    """Code J of a unit held in words w0 (w1, w2 for 3 bits), as int32 in [0, 2^BITS)."""
    MASK: tl.constexpr = (1 << BITS) - 1
    BIT: tl.constexpr = J * BITS
    WORD: tl.constexpr = BIT // 32
    SHIFT: tl.constexpr = BIT % 32
    if WORD == 0:
        lo = w0
        hi = w1
    elif WORD == 1:
        lo = w1
        hi = w2
    else:
        lo = w2
        hi = w2
    if SHIFT + BITS <= 32:
        q = (lo >> SHIFT) & MASK
    else:  # straddles into the next word (3 bits only)
        LOW_BITS: tl.constexpr = 32 - SHIFT
        q = ((lo >> SHIFT) & ((1 << LOW_BITS) - 1)) | ((hi & ((1 << (BITS - LOW_BITS)) - 1)) << LOW_BITS)
    return q


@triton.jit
def _as_biased_float(q):
    """2^23 + q as fp32, exactly, for 0 <= q < 2^23."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def _zero_points(zero_ptr, rows, group, groups, zero_words, BITS: tl.constexpr):
    """z[rows, group] from the zero points packed down the rows: element r of column g starts at bit
    r*BITS of that column's bit stream. `rows` and `group` broadcast against each other."""
    MASK: tl.constexpr = (1 << BITS) - 1
    bit = rows * BITS
    word = bit // 32
    shift = bit % 32
    if 32 % BITS == 0:  # never straddles: one word
        return (tl.load(zero_ptr + word * groups + group) >> shift) & MASK
    else:  # a 64-bit window of two words
        lo = tl.load(zero_ptr + word * groups + group).to(tl.int64) & 0xFFFFFFFF
        hi = tl.load(zero_ptr + tl.minimum(word + 1, zero_words - 1) * groups + group).to(tl.int64) & 0xFFFFFFFF
        return ((((hi << 32) | lo) >> shift) & MASK).to(tl.int32)


# ---------------------------------------------------------------------------------------------------
# batch 1


@triton.jit
def _unit_words(word, UNIT_WORDS: tl.constexpr):
    """The words of the units at pointers `word`: three for 3 bits, else one (passed three times)."""
    w0 = tl.load(word)
    if UNIT_WORDS == 3:
        return w0, tl.load(word + 1), tl.load(word + 2)
    else:
        return w0, w0, w0


@triton.jit
def _chunk_loads(row_words, rows_safe, units, scale_ptr, zero_ptr, groups, zero_words, chunk, chunks,
                      BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr,
                      GROUP_SIZE: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    """The loads of one step over a chunk of columns: (first column, words, scale, zero point). A chunk
    past `chunks` (the end of this program's split) reads chunk 0 with a zero scale: it adds nothing."""
    live = chunk < chunks
    col0 = tl.where(live, chunk, 0) * CHUNK
    word = row_words + (col0 // UNIT_CODES + units)[None, :] * UNIT_WORDS  # (BLOCK_N, UNITS)
    w0, w1, w2 = _unit_words(word, UNIT_WORDS)
    group = col0 // GROUP_SIZE
    scale = tl.load(scale_ptr + rows_safe * groups + group).to(tl.float32)  # (BLOCK_N,)
    scale = tl.where(live, scale, 0.0)
    z = _zero_points(zero_ptr, rows_safe, group, groups, zero_words, BITS).to(tl.float32)  # (BLOCK_N,)
    return col0, w0, w1, w2, scale, z


@triton.jit
def _gemv_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr,
    N, K, words_per_row, groups, zero_words, magic,
    BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr, GROUP_SIZE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    STEPS_PER_SPLIT: tl.constexpr,  # a compile-time trip count (one per layer width and split)
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    UNITS: tl.constexpr = CHUNK // UNIT_CODES
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)  # out-of-range rows read row N-1 and are not stored
    units = tl.arange(0, UNITS)
    row_words = packed_ptr + rows_safe[:, None].to(tl.int64) * words_per_row  # (BLOCK_N, 1)

    chunks = K // CHUNK
    acc = tl.zeros((BLOCK_N, UNITS), dtype=tl.float32)
    # this program's chunks: pid_k * STEPS_PER_SPLIT + step; each step's loads are issued one step
    # ahead (registers as a second buffer), so every warp keeps two chunks of weights in flight
    col0_next, w0_next, w1_next, w2_next, scale_next, z_next = _chunk_loads(
        row_words, rows_safe, units, scale_ptr, zero_ptr, groups, zero_words, pid_k * STEPS_PER_SPLIT, chunks,
        BITS, UNIT_WORDS, UNIT_CODES, GROUP_SIZE, CHUNK,
    )  # fmt: skip
    for step in range(0, STEPS_PER_SPLIT):
        col0, w0, w1, w2, scale, z = col0_next, w0_next, w1_next, w2_next, scale_next, z_next
        col0_next, w0_next, w1_next, w2_next, scale_next, z_next = _chunk_loads(
            row_words, rows_safe, units, scale_ptr, zero_ptr, groups, zero_words, pid_k * STEPS_PER_SPLIT + step + 1,
            tl.minimum(chunks, (pid_k + 1) * STEPS_PER_SPLIT), BITS, UNIT_WORDS, UNIT_CODES, GROUP_SIZE, CHUNK,
        )  # fmt: skip
        part = tl.zeros((BLOCK_N, UNITS), dtype=tl.float32)
        if UNIT_WORDS == 1:
            # Codes masked in place, no shift: code j of a 16-bit half sits at bit P = (j*BITS) % 16,
            # so (half & (MASK << P)) | 2^23 is the float 2^23 + 2^P q (P + BITS <= 23); minus
            # 2^23 + 2^P z it is 2^P (q - z) exactly, and x is pre-scaled by 2^-P (exact). The bits of
            # 2^23 arrive as the argument `magic`, so they sit in a register and ptxas fuses the AND
            # and OR into one LOP3 (with both as immediates it emitted two).
            halves_hi = (w0 >> 16) & 0xFFFF
            for j in tl.static_range(UNIT_CODES):
                P = (j * BITS) % 16  # a compile-time int (j and BITS are)
                if j * BITS < 16:
                    half = w0
                else:
                    half = halves_hi
                x = tl.load(x_ptr + col0 + units * UNIT_CODES + j).to(tl.float32) * (1.0 / (1 << P))  # (UNITS,)
                q_scaled = ((half & (((1 << BITS) - 1) << P)) | magic).to(tl.float32, bitcast=True)
                part += (q_scaled - (8388608.0 + z * (1 << P))[:, None]) * x[None, :]
        else:
            zero = z + 8388608.0
            for j in tl.static_range(UNIT_CODES):
                x = tl.load(x_ptr + col0 + units * UNIT_CODES + j).to(tl.float32)  # (UNITS,)
                q_minus_z = _as_biased_float(_code(w0, w1, w2, j, BITS)) - zero[:, None]  # exact
                part += q_minus_z * x[None, :]
        acc += part * scale[:, None]
    y = tl.sum(acc, axis=1)  # (BLOCK_N,)
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows_safe).to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)
    else:  # out_ptr is a zeroed fp32 buffer; the wrapper adds the bias and casts
        tl.atomic_add(out_ptr + rows, y, mask=rows < N)


# ---------------------------------------------------------------------------------------------------
# batch > 1: codes of a chunk put back in column order, one tl.dot per chunk


@triton.jit
def _natural2(q0, q1):
    return tl.interleave(q0, q1)  # column 2u + i holds q_i[u]


@triton.jit
def _natural4(q0, q1, q2, q3):
    return tl.interleave(_natural2(q0, q2), _natural2(q1, q3))  # evens, then odds, interleaved


@triton.jit
def _natural8(q0, q1, q2, q3, q4, q5, q6, q7):
    return tl.interleave(_natural4(q0, q2, q4, q6), _natural4(q1, q3, q5, q7))


@triton.jit
def _weight(w0, w1, w2, high_halves, zero, scale, magic, J: tl.constexpr, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr):
    """(q_J - z) * scale for code J of each unit, fp32, exact before its one rounding. zero and scale
    are per row. With whole-word units the code is masked in place (see the GEMV) and the zero and
    scale are shifted by the same power of two; 3-bit codes are shifted out."""
    if UNIT_WORDS == 1:
        P = (J * BITS) % 16  # a compile-time int
        if J * BITS < 16:
            half = w0
        else:
            half = high_halves
        biased = ((half & (((1 << BITS) - 1) << P)) | magic).to(tl.float32, bitcast=True)  # 2^23 + 2^P q
        return (biased - (8388608.0 + zero * (1 << P))[:, None]) * (scale * (1.0 / (1 << P)))[:, None]
    else:
        return (_as_biased_float(_code(w0, w1, w2, J, BITS)) - (8388608.0 + zero)[:, None]) * scale[:, None]


@triton.jit
def _natural16(w0, w1, w2, hi, zero, scale, magic, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, DT: tl.constexpr, FIRST: tl.constexpr, STRIDE: tl.constexpr):
    """Weights of codes FIRST, FIRST+STRIDE, ... (16 of them) of each unit, in that order along the columns."""
    evens = _natural8(
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 2 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 4 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 6 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 8 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 10 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 12 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 14 * STRIDE, BITS, UNIT_WORDS).to(DT),
    )  # fmt: skip
    odds = _natural8(
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 3 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 5 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 7 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 9 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 11 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 13 * STRIDE, BITS, UNIT_WORDS).to(DT),
        _weight(w0, w1, w2, hi, zero, scale, magic, FIRST + 15 * STRIDE, BITS, UNIT_WORDS).to(DT),
    )  # fmt: skip
    return tl.interleave(evens, odds)


@triton.jit
def _weights_in_order(w0, w1, w2, zero, scale, magic, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr, DT: tl.constexpr):
    """(rows, units) packed units -> (rows, units * UNIT_CODES) weights (q - z) * scale in column order, as DT."""
    hi = (w0 >> 16) & 0xFFFF
    if UNIT_CODES == 4:
        return _natural4(
            _weight(w0, w1, w2, hi, zero, scale, magic, 0, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 1, BITS, UNIT_WORDS).to(DT),
            _weight(w0, w1, w2, hi, zero, scale, magic, 2, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 3, BITS, UNIT_WORDS).to(DT),
        )  # fmt: skip
    elif UNIT_CODES == 8:
        return _natural8(
            _weight(w0, w1, w2, hi, zero, scale, magic, 0, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 1, BITS, UNIT_WORDS).to(DT),
            _weight(w0, w1, w2, hi, zero, scale, magic, 2, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 3, BITS, UNIT_WORDS).to(DT),
            _weight(w0, w1, w2, hi, zero, scale, magic, 4, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 5, BITS, UNIT_WORDS).to(DT),
            _weight(w0, w1, w2, hi, zero, scale, magic, 6, BITS, UNIT_WORDS).to(DT), _weight(w0, w1, w2, hi, zero, scale, magic, 7, BITS, UNIT_WORDS).to(DT),
        )  # fmt: skip
    elif UNIT_CODES == 16:
        return _natural16(w0, w1, w2, hi, zero, scale, magic, BITS, UNIT_WORDS, DT, 0, 1)
    else:  # 32 codes (3 bits): the even codes' order interleaved with the odd codes'
        return tl.interleave(
            _natural16(w0, w1, w2, hi, zero, scale, magic, BITS, UNIT_WORDS, DT, 0, 2),
            _natural16(w0, w1, w2, hi, zero, scale, magic, BITS, UNIT_WORDS, DT, 1, 2),
        )


@triton.jit
def _gemm_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr,
    M, N, K, words_per_row, groups, zero_words, stride_xm, stride_om, magic,
    BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr, GROUP_SIZE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, FP32_DOT: tl.constexpr, STEPS_PER_SPLIT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    UNITS: tl.constexpr = CHUNK // UNIT_CODES
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_safe = tl.minimum(rows, N - 1)
    tokens = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tokens_safe = tl.minimum(tokens, M - 1)
    units = tl.arange(0, UNITS)
    cols = tl.arange(0, CHUNK)
    row_words = packed_ptr + rows_safe[:, None].to(tl.int64) * words_per_row
    x_rows = x_ptr + tokens_safe[:, None].to(tl.int64) * stride_xm  # (BLOCK_M, 1)

    chunks = K // CHUNK
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, STEPS_PER_SPLIT):
        col0, w0, w1, w2, scale, zero = _chunk_loads(
            row_words, rows_safe, units, scale_ptr, zero_ptr, groups, zero_words, pid_k * STEPS_PER_SPLIT + step, chunks,
            BITS, UNIT_WORDS, UNIT_CODES, GROUP_SIZE, CHUNK,
        )  # fmt: skip
        x = tl.load(x_rows + (col0 + cols)[None, :])  # (BLOCK_M, CHUNK)
        W = _weights_in_order(w0, w1, w2, zero, scale, magic, BITS, UNIT_WORDS, UNIT_CODES, x.dtype)  # (BLOCK_N, CHUNK)
        if FP32_DOT:
            acc += tl.dot(x, tl.trans(W), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(W))
    store_tile(acc, out_ptr, bias_ptr, tokens, rows, M, N, stride_om, HAS_BIAS, SPLIT_K)


@triton.jit
def store_tile(acc, out_ptr, bias_ptr, tokens, rows, M, N, stride_om, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Write a (tokens, rows) fp32 tile: plus bias and cast to the output's dtype, or, split along the
    columns, added into a zeroed fp32 buffer (the wrapper then adds the bias and casts)."""
    out = out_ptr + tokens[:, None].to(tl.int64) * stride_om + rows[None, :]
    mask = (tokens[:, None] < M) & (rows[None, :] < N)
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


# ---------------------------------------------------------------------------------------------------
# dequantize


@triton.jit
def _dequantize_kernel(
    packed_ptr, scale_ptr, zero_ptr, out_ptr,
    N, K, words_per_row, groups, zero_words,
    BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_UNITS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    unit = tl.program_id(1) * BLOCK_UNITS + tl.arange(0, BLOCK_UNITS)
    mask = (rows[:, None] < N) & (unit[None, :] < K // UNIT_CODES)
    rows_safe = tl.minimum(rows, N - 1)
    unit_safe = tl.minimum(unit, K // UNIT_CODES - 1)
    word = packed_ptr + rows_safe[:, None].to(tl.int64) * words_per_row + unit_safe[None, :] * UNIT_WORDS
    w0, w1, w2 = _unit_words(word, UNIT_WORDS)
    group = (unit_safe * UNIT_CODES) // GROUP_SIZE
    scale = tl.load(scale_ptr + rows_safe[:, None] * groups + group[None, :]).to(tl.float32)
    zero = _zero_points(zero_ptr, rows_safe[:, None], group[None, :], groups, zero_words, BITS).to(tl.float32) + 8388608.0
    out = out_ptr + rows[:, None].to(tl.int64) * K + unit[None, :] * UNIT_CODES
    for j in tl.static_range(UNIT_CODES):
        W = (_as_biased_float(_code(w0, w1, w2, j, BITS)) - zero) * scale  # (q - z) * scale, one fp32 rounding
        tl.store(out + j, W.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# wrappers


def _check(weight: IntGroupWeight) -> tuple[int, int]:
    reason = unsupported(weight)
    if reason:
        raise QuantbenchError(f"Triton int kernels: {reason}; use quantbench.kernels.reference.matmul_int_group")
    return unit_shape(weight.bits)


def _gemv_chunk(group_size: int, unit_codes: int, max_chunk: int) -> int:
    """Columns per GEMV step: the group, or the largest power-of-two part of it up to max_chunk."""
    chunk = group_size
    while chunk > max_chunk and chunk % 2 == 0 and (chunk // 2) % unit_codes == 0:
        chunk //= 2
    return chunk


def matmul(
    x: torch.Tensor,
    weight: IntGroupWeight,
    bias: torch.Tensor | None = None,
    gemv: GemvConfig | None = None,
    gemm: GemmConfig | None = None,
) -> torch.Tensor:
    """y = x @ W.T (+ bias): x (..., cols) fp16/bf16/fp32 -> y (..., rows) in x's dtype."""
    unit_words, unit_codes = _check(weight)
    if x.shape[-1] != weight.cols:
        raise QuantbenchError(f"x has {x.shape[-1]} columns, the weight {weight.cols}")
    x2 = x.reshape(-1, weight.cols).contiguous()
    M, N, K = x2.shape[0], weight.rows, weight.cols
    common = (K, weight.packed.shape[1], weight.groups, weight.zero_point.shape[0])
    bias_arg = bias if bias is not None else x2  # any tensor; not read without HAS_BIAS
    if M == 1 and gemm is None:  # (a GemmConfig given for batch 1 runs the tensor-core kernel instead)
        chunk = _gemv_chunk(weight.group_size, unit_codes, (gemv or GemvConfig()).max_chunk)
        cfg = gemv or default_gemv(N, K // chunk)
        out = torch.empty(N, dtype=x.dtype, device=x.device) if cfg.split_k == 1 else torch.zeros(N, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(N, cfg.block_n), cfg.split_k)
        _gemv_kernel[grid](
            x2, weight.packed, weight.scale, weight.zero_point, bias_arg, out, N, *common, MAGIC,
            STEPS_PER_SPLIT=triton.cdiv(K // chunk, cfg.split_k),
            BITS=weight.bits, UNIT_WORDS=unit_words, UNIT_CODES=unit_codes, GROUP_SIZE=weight.group_size,
            CHUNK=chunk, BLOCK_N=cfg.block_n, SPLIT_K=cfg.split_k, HAS_BIAS=bias is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    else:
        chunk = _gemv_chunk(weight.group_size, unit_codes, (gemm or GemmConfig()).max_chunk)
        cfg = gemm or default_gemm(M, K // chunk)
        if chunk < 16:
            raise QuantbenchError(f"group size {weight.group_size}: the batched int kernel needs groups of at least 16 columns")
        out = torch.empty(M, N, dtype=x.dtype, device=x.device) if cfg.split_k == 1 else torch.zeros(M, N, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, cfg.block_m), cfg.split_k)
        _gemm_kernel[grid](
            x2, weight.packed, weight.scale, weight.zero_point, bias_arg, out, M, N, *common, x2.stride(0), out.stride(0), MAGIC,
            BITS=weight.bits, UNIT_WORDS=unit_words, UNIT_CODES=unit_codes, GROUP_SIZE=weight.group_size,
            CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT_K=cfg.split_k,
            HAS_BIAS=bias is not None, FP32_DOT=x.dtype == torch.float32,
            STEPS_PER_SPLIT=triton.cdiv(K // chunk, cfg.split_k),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    if out.dtype != x.dtype:  # split-K partials were summed in fp32
        if bias is not None:
            out += bias.float()
        out = out.to(x.dtype)
    return out.reshape(*x.shape[:-1], N)


def dequantize(weight: IntGroupWeight, dtype: torch.dtype = torch.float32, block_n: int = 32, block_units: int = 16) -> torch.Tensor:
    """W (rows, cols) in `dtype`, bit-exact with reference.dequantize_int_group."""
    unit_words, unit_codes = _check(weight)
    N, K = weight.rows, weight.cols
    out = torch.empty(N, K, dtype=dtype, device=weight.packed.device)
    grid = (triton.cdiv(N, block_n), triton.cdiv(K // unit_codes, block_units))
    _dequantize_kernel[grid](
        weight.packed, weight.scale, weight.zero_point, out, N, K, weight.packed.shape[1], weight.groups, weight.zero_point.shape[0],
        BITS=weight.bits, UNIT_WORDS=unit_words, UNIT_CODES=unit_codes, GROUP_SIZE=weight.group_size,
        BLOCK_N=block_n, BLOCK_UNITS=block_units,
    )  # fmt: skip
    return out

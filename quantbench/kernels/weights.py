"""The packed weights the kernels read: each format's stored tensors, exactly as quantbench writes them.

One frozen dataclass per format. The tensors are the artifact's own (no repacking, no copies): a
runtime fills these straight from the safetensors file, moves them to its device, and hands them to
`quantbench.kernels.reference` or to a fast kernel. Glossary: `rows` = out_features, `cols` =
in_features, `group_size` = elements sharing a scale. Every matmul computes x @ W.T (+ bias): x is
(..., cols), the result (..., rows).

Checks run once at construction (shapes and dtypes), so a kernel never reads a malformed layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise QuantbenchError(message)


def words_per_row(cols: int, bits: int) -> int:
    """int32 words holding one row of `cols` codes of `bits` bits (a dense bit stream, padded to a word)."""
    return -(-cols * bits // 32)


@dataclass(frozen=True)
class IntGroupWeight:
    """compressed-tensors "pack-quantized", asymmetric, group-wise (quantbench.formats.compressed_tensors).

        packed      int32 (rows, ceil(cols*bits/32))   codes q in [0, 2^bits), each row a dense bit
                                                       stream: element i at bits i*bits.. of the row,
                                                       LSB first from bit 0 of word 0; with 3 bits an
                                                       element may straddle two words
        scale       fp16 or bf16 (rows, groups)       groups = cols / group_size
        zero_point  int32 (ceil(rows*bits/32), groups) codes z in [0, 2^bits), packed DOWN THE ROWS:
                                                       column g is the bit stream of z[0..rows, g]

    W[r, c] = (q[r, c] - z[r, g]) * scale[r, g] with g = c // group_size. bits in {2, 3, 4, 8}.
    For 4 bits one word of `packed` holds 8 consecutive columns:

        bit:  31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
              q[7]   q[6]   q[5]   q[4]   q[3]   q[2]   q[1]   q[0]
    """

    packed: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    rows: int
    cols: int
    bits: int
    group_size: int

    def __post_init__(self):
        _require(self.bits in (2, 3, 4, 8), f"bits={self.bits}: the group-wise int kernels take 2, 3, 4 or 8 bits")
        _require(self.group_size > 0 and self.cols % self.group_size == 0, f"group size {self.group_size} does not tile {self.cols} columns")
        groups = self.cols // self.group_size
        _require(
            self.packed.dtype == torch.int32 and tuple(self.packed.shape) == (self.rows, words_per_row(self.cols, self.bits)),
            f"weight_packed must be int32 ({self.rows}, {words_per_row(self.cols, self.bits)}); got {self.packed.dtype} {tuple(self.packed.shape)}",
        )
        _require(
            self.scale.dtype in HALF_DTYPES + (torch.float32,) and tuple(self.scale.shape) == (self.rows, groups),
            f"weight_scale must be fp16/bf16/fp32 ({self.rows}, {groups}); got {self.scale.dtype} {tuple(self.scale.shape)}",
        )
        zero_words = words_per_row(self.rows, self.bits)
        _require(
            self.zero_point.dtype == torch.int32 and tuple(self.zero_point.shape) == (zero_words, groups),
            f"weight_zero_point must be int32 ({zero_words}, {groups}); got {self.zero_point.dtype} {tuple(self.zero_point.shape)}",
        )
        _require(self.packed.is_contiguous() and self.scale.is_contiguous() and self.zero_point.is_contiguous(), "packed tensors must be contiguous")

    @property
    def groups(self) -> int:
        return self.cols // self.group_size

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> "IntGroupWeight":
        """From one module's stored tensors: suffix ("weight_packed", "weight_scale",
        "weight_zero_point", "weight_shape") -> tensor, as in model.safetensors."""
        rows, cols = (int(v) for v in tensors["weight_shape"])
        return cls(tensors["weight_packed"], tensors["weight_scale"], tensors["weight_zero_point"], rows, cols, bits, group_size)

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero_point))


@dataclass(frozen=True)
class Bnb4bitWeight:
    """bitsandbytes 4-bit (nf4 / fp4), with or without double quant, as `save_pretrained` stores it.

    The weight (rows, cols) is flattened row-major to n = rows*cols values, cut into blocks of
    `blocksize` (64) consecutive values; blocks run across row ends when cols % blocksize != 0.

        packed   uint8 (ceil(n/2), 1) or (ceil(n/2),)   two codes a byte, FIRST value in the HIGH nibble
                                                        byte j = code[2j] << 4 | code[2j+1]
        code     fp32 (16,)                             `quant_map`: the nf4 or fp4 value of each code
        absmax   fp32 (ceil(n/blocksize),)              without double quant
                 uint8 (ceil(n/blocksize),)             with double quant: codes into nested_code
        nested_code    fp32 (256,)                      `nested_quant_map` (signed 8-bit dynamic map)
        nested_absmax  fp32 (ceil(blocks/256),)         one per `nested_blocksize` (256) absmax codes
        nested_offset  fp32 ()                          the mean absmax subtracted before nesting

    absmax[b] = nested_code[absmax_code[b]] * nested_absmax[b // 256] + nested_offset   (double quant)
    W.flat[i] = code[q_i] * absmax[i // blocksize]   (fp32, then cast)  -- bitsandbytes 0.50.2
    `dequantize_4bit` / `dequantize_blockwise` compute exactly this, in this order.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    code: torch.Tensor
    rows: int
    cols: int
    quant_type: str
    blocksize: int = 64
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_offset: torch.Tensor | None = None
    nested_blocksize: int = 256

    def __post_init__(self):
        n = self.rows * self.cols
        blocks = -(-n // self.blocksize)
        _require(self.quant_type in ("nf4", "fp4"), f"quant_type {self.quant_type!r}: bitsandbytes 4-bit is nf4 or fp4")
        _require(self.packed.dtype == torch.uint8 and self.packed.numel() == -(-n // 2), f"packed weight must be uint8 with ceil({n}/2) bytes; got {self.packed.dtype} {tuple(self.packed.shape)}")
        _require(self.code.dtype == torch.float32 and self.code.numel() == 16, "quant_map must be fp32 (16,)")
        _require(self.absmax.numel() == blocks, f"absmax must have ceil({n}/{self.blocksize}) = {blocks} entries; got {self.absmax.numel()}")
        if self.double_quant:
            _require(self.absmax.dtype == torch.uint8, "double quant: absmax holds uint8 codes")
            _require(self.nested_code is not None and self.nested_offset is not None, "double quant needs nested_quant_map and nested_offset too")
            _require(self.nested_absmax.dtype == torch.float32 and self.nested_absmax.numel() == -(-blocks // self.nested_blocksize), "nested_absmax must be fp32, one per 256 blocks")
            _require(self.nested_code.dtype == torch.float32 and self.nested_code.numel() == 256, "nested_quant_map must be fp32 (256,)")
        else:
            _require(self.absmax.dtype == torch.float32, "absmax must be fp32 without double quant (bitsandbytes' CPU-repacked bf16 layout is not read here)")
        _require(self.packed.is_contiguous() and self.absmax.is_contiguous(), "packed tensors must be contiguous")

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    def stored_bytes(self) -> int:
        tensors = [self.packed, self.absmax, self.code] + ([self.nested_absmax, self.nested_code] if self.double_quant else [])
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class BnbInt8Weight:
    """bitsandbytes LLM.int8 as stored: `weight` int8 (rows, cols) (bitsandbytes' CB) and `SCB` fp32
    (rows,), each row's absmax, so W[r, c] = weight[r, c] * SCB[r] / 127. `threshold` (transformers'
    `llm_int8_threshold`, 6.0 by default) drives the outlier decomposition of the matmul; 0 disables it."""

    weight: torch.Tensor
    scb: torch.Tensor
    threshold: float = 6.0

    def __post_init__(self):
        _require(self.weight.dtype == torch.int8 and self.weight.dim() == 2, f"LLM.int8 weight must be int8 (rows, cols); got {self.weight.dtype} {tuple(self.weight.shape)}")
        _require(self.scb.dtype == torch.float32 and tuple(self.scb.shape) == (self.weight.shape[0],), "SCB must be fp32 (rows,)")
        _require(self.threshold >= 0, "threshold must be >= 0 (0 disables the outlier decomposition)")

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def cols(self) -> int:
        return self.weight.shape[1]

    def stored_bytes(self) -> int:
        return self.weight.numel() + 4 * self.scb.numel()

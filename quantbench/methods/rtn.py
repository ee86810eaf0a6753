"""Round-to-nearest onto a per-group asymmetric min-max integer grid.

The baseline GPTQ and AWQ are measured against, and the grid both of them round onto:
for each row and each group of `group_size` consecutive columns,

    scale = (max(w, 0) - min(w, 0)) / (2^bits - 1)       (the range always holds 0, as in GPTQ's code)
    zero  = round(-min(w, 0) / scale)                       an integer in [0, 2^bits - 1]
    q     = clamp(round(w / scale) + zero, 0, 2^bits - 1)
    w_hat = scale * (q - zero)

The scale is rounded to its storage dtype (fp16 by default) BEFORE the codes are chosen, so the codes
are the best ones for the scale that is actually stored. The last group of a row may be shorter
than `group_size` when it does not divide `cols`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class RTNConfig:
    bits: int = 4
    group_size: int = 128  # columns sharing one scale and zero point
    scale_dtype: str = "float16"
    version: int = 1  # of the values this method chooses; recorded in artifacts

    def __post_init__(self):
        validate_grid(self.bits, self.group_size, self.scale_dtype)


def validate_grid(bits: int, group_size: int, scale_dtype: str) -> None:
    if not 2 <= bits <= 8:
        raise QuantbenchError(f"bits={bits}: integer grids here take 2 to 8 bits")
    if group_size < 1:
        raise QuantbenchError(f"group_size={group_size}: must be a positive number of columns")
    if scale_dtype not in SCALE_DTYPES:
        raise QuantbenchError(f"scale_dtype={scale_dtype!r}: choose one of {', '.join(SCALE_DTYPES)}")


@dataclass(frozen=True)
class QuantizedLinear:
    """Format-neutral result for one weight (rows, cols): what a format packs, nothing packed yet."""

    codes: torch.Tensor  # (rows, cols) uint8, each in [0, 2^bits)
    scales: torch.Tensor  # (rows, groups) in the scale dtype
    zeros: torch.Tensor  # (rows, groups) uint8 integer zero points in [0, 2^bits)
    bits: int
    group_size: int
    # (cols,) int32 group of each column, only when it is not col // group_size (act-order with
    # groups formed in processing order, GPTQ's `desc_act` + g_idx). None: natural groups.
    g_idx: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def column_groups(self) -> torch.Tensor:
        """(cols,) group index of every column."""
        if self.g_idx is not None:
            return self.g_idx.long()
        cols = self.codes.shape[1]
        return torch.arange(cols, device=self.codes.device) // self.group_size

    def dequantize(self) -> torch.Tensor:
        """(rows, cols) float32: scale * (q - zero) of each column's group."""
        groups = self.column_groups()
        scale = self.scales.float()[:, groups]
        zero = self.zeros.float()[:, groups]
        return scale * (self.codes.float() - zero)

    def to(self, device) -> "QuantizedLinear":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedLinear(move(self.codes), move(self.scales), move(self.zeros), self.bits, self.group_size, move(self.g_idx))


def minmax_grid(W: torch.Tensor, bits: int, scale_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row grid of one group. W: (rows, n) -> scale (rows,) and zero (rows,), in W's float dtype.

    The scale carries exactly the value its storage dtype holds; zero is integer-valued.
    """
    maxq = 2**bits - 1
    xmin = W.amin(dim=1).clamp(max=0)
    xmax = W.amax(dim=1).clamp(min=0)
    empty = (xmin == 0) & (xmax == 0)  # an all-zero row: any grid holds it; GPTQ's code picks [-1, 1]
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    store = SCALE_DTYPES[scale_dtype]
    # The smallest normal number keeps a tiny range from rounding to a zero scale in fp16.
    scale = ((xmax - xmin) / maxq).clamp(min=torch.finfo(store).tiny).to(store).to(W.dtype)
    zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of w on the grid; w (rows,) or (rows, n) with scale/zero (rows,) broadcast over columns."""
    if w.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize_grid(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    if q.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return scale * (q - zero)


def group_starts(cols: int, group_size: int) -> range:
    return range(0, cols, group_size)


def rtn_quantize(W: torch.Tensor, config: RTNConfig) -> QuantizedLinear:
    """Round every group of W (rows, cols) to its own min-max grid."""
    W = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    rows, cols = W.shape
    group_size = config.group_size
    full = cols // group_size  # whole groups, done at once; a shorter last group after them
    codes, scales, zeros = [], [], []
    for start, width, count in ((0, group_size, full), (full * group_size, cols - full * group_size, 1)):
        if width == 0 or count == 0:
            continue
        Wg = W[:, start : start + width * count].reshape(rows * count, width)  # one group per row
        scale, zero = minmax_grid(Wg, config.bits, config.scale_dtype)
        codes.append(quantize_to_grid(Wg, scale, zero, config.bits).reshape(rows, width * count))
        scales.append(scale.reshape(rows, count))
        zeros.append(zero.reshape(rows, count))
    return QuantizedLinear(
        codes=torch.cat(codes, dim=1).to(torch.uint8),
        scales=torch.cat(scales, dim=1).to(SCALE_DTYPES[config.scale_dtype]),
        zeros=torch.cat(zeros, dim=1).to(torch.uint8),
        bits=config.bits,
        group_size=group_size,
    )

"""Round-to-nearest against a direct float64 min-max computation, one group at a time."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.rtn import RTNConfig, rtn_quantize


def direct_rtn(W: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Dequantized W, element by element from the definition: per row and group, the range
    [min(w, 0), max(w, 0)] cut into 2^bits - 1 steps (step stored as fp16), integer zero point."""
    W = W.double()
    rows, cols = W.shape
    out = torch.empty_like(W)
    maxq = 2**bits - 1
    for r in range(rows):
        for start in range(0, cols, group_size):
            w = W[r, start : start + group_size]
            lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
            if lo == hi == 0.0:
                lo, hi = -1.0, 1.0
            step = float(torch.tensor((hi - lo) / maxq).half())
            zero = min(max(round(-lo / step), 0), maxq)
            for c in range(w.numel()):
                q = min(max(round(float(w[c]) / step) + zero, 0), maxq)
                out[r, start + c] = step * (q - zero)
    return out


@pytest.mark.parametrize("bits,group_size,cols", [(2, 32, 64), (3, 64, 128), (4, 128, 128), (8, 32, 96), (4, 48, 100)])
def test_rtn_matches_direct_float64(bits, group_size, cols):
    g = torch.Generator().manual_seed(bits * 7 + cols)
    W = torch.randn(12, cols, generator=g, dtype=torch.float64) * 0.05
    W[0, :group_size] = 0  # an all-zero group
    W[1] = W[1].abs()  # a row with no negative weights: the range still holds 0
    q = rtn_quantize(W, RTNConfig(bits=bits, group_size=group_size))
    torch.testing.assert_close(q.dequantize().double(), direct_rtn(W, bits, group_size), rtol=0, atol=1e-12)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    assert q.scales.shape == (12, -(-cols // group_size)) and q.scales.dtype == torch.float16


def test_rtn_error_bound_half_step():
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    q = rtn_quantize(W, RTNConfig(bits=4, group_size=64))
    step = q.scales.float().repeat_interleave(64, dim=1)
    assert ((q.dequantize() - W).abs() <= step / 2 + 1e-6).all()
    # SQNR of 4-bit g64 on Gaussian weights: about 20 dB (6.02 dB per bit minus the range cost)
    sqnr = 10 * torch.log10(W.pow(2).sum() / (q.dequantize() - W).pow(2).sum())
    assert 18 < float(sqnr) < 24


def test_rtn_keeps_input_dtype_untouched():
    W = torch.randn(8, 64, dtype=torch.bfloat16)
    W_copy = W.clone()
    rtn_quantize(W, RTNConfig(bits=4, group_size=32))
    assert torch.equal(W, W_copy)


def test_rtn_rejects_bad_config():
    with pytest.raises(QuantbenchError, match="bits"):
        RTNConfig(bits=9)
    with pytest.raises(QuantbenchError, match="scale_dtype"):
        RTNConfig(scale_dtype="int8")

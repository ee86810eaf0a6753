"""GPTQ against a naive column-by-column GPTQ written here: explicit OBS downdates of H^-1, no
Cholesky, no lazy batches, float64 (Frantar et al. 2023, eq. 2-3; OBS, Hassibi & Stork 1993)."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.gptq import GPTQConfig, HessianAccumulator, gptq_quantize, output_error
from quantbench.methods.rtn import RTNConfig, rtn_quantize


def naive_grid(w: torch.Tensor, bits: int):
    """Min-max grid of a (rows, n) slice, written out directly (fp16-stored scale)."""
    maxq = 2**bits - 1
    lo = torch.minimum(w.min(dim=1).values, torch.zeros(w.shape[0], dtype=w.dtype))
    hi = torch.maximum(w.max(dim=1).values, torch.zeros(w.shape[0], dtype=w.dtype))
    both_zero = (lo == 0) & (hi == 0)
    lo[both_zero], hi[both_zero] = -1.0, 1.0
    scale = ((hi - lo) / maxq).half().double()
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def naive_gptq(W, H, bits, group_size, damp=0.01, act_order=False, static_groups=True):
    """Returns the dequantized W_hat (rows, cols), natural column order."""
    W = W.double().clone()
    H = H.double().clone()
    rows, cols = W.shape
    maxq = 2**bits - 1
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    grids = {}
    if act_order and static_groups:
        for g in range(0, cols, group_size):
            grids[g // group_size] = naive_grid(W[:, g : g + group_size], bits)
    order = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    H = H + damp * torch.diag(H)[order].mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)  # inverse Hessian over the columns not yet quantized (natural indexing)
    W_hat = torch.zeros_like(W)
    for position, j in enumerate(order.tolist()):
        if act_order and static_groups:
            scale, zero = grids[j // group_size]
        elif position % group_size == 0:  # a new group: the next group_size columns in visiting order
            members = order[position : position + group_size]
            scale, zero = naive_grid(W[:, members], bits)
        q = torch.clamp(torch.round(W[:, j] / scale) + zero, 0, maxq)
        W_hat[:, j] = scale * (q - zero)
        err = (W[:, j] - W_hat[:, j]) / Hinv[j, j]
        rest = order[position + 1 :]
        W[:, rest] -= err[:, None] * Hinv[j, rest][None, :]  # OBS update of the remaining weights
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]  # remove column j from H^-1
    return W_hat


def problem(rows=24, cols=96, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    # correlated inputs with uneven channel scales, like real activations
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g, dtype=torch.float64) * 0.3
    X *= torch.rand(cols, generator=g, dtype=torch.float64) * 3
    X[:, 5] = 0  # one dead input channel
    acc = HessianAccumulator(cols, "cpu", torch.float64)
    acc.add(X[:150])
    acc.add(X[150:])
    return W, acc.H, X


@pytest.mark.parametrize(
    "bits,group_size,act_order,static_groups,block_size",
    [
        (4, 96, False, True, 128),  # one group per row
        (4, 32, False, True, 128),  # groups inside one lazy block
        (3, 16, False, True, 40),  # block size rounded up to a multiple of the group size
        (4, 32, True, True, 128),  # act-order, static groups
        (4, 32, True, False, 128),  # act-order, groups in visiting order (g_idx)
        (2, 24, True, False, 32),
        (8, 40, False, True, 128),  # ragged last group (96 = 40 + 40 + 16)
    ],
)
def test_gptq_equals_naive_obs(bits, group_size, act_order, static_groups, block_size):
    W, H, _ = problem()
    config = GPTQConfig(bits=bits, group_size=group_size, act_order=act_order, static_groups=static_groups, block_size=block_size)
    ours = gptq_quantize(W, H, config)
    expected = naive_gptq(W, H, bits, group_size, act_order=act_order, static_groups=static_groups)
    torch.testing.assert_close(ours.dequantize().double(), expected, rtol=0, atol=1e-9)
    assert ours.codes.max() <= 2**bits - 1
    if act_order and not static_groups:
        assert ours.g_idx is not None and ours.g_idx.shape == (W.shape[1],)
        assert not torch.equal(ours.g_idx.long(), torch.arange(W.shape[1]) // group_size)
    else:
        assert ours.g_idx is None


def test_hessian_accumulator_is_2_xtx_over_tokens():
    W, H, X = problem()
    torch.testing.assert_close(H, 2 * X.T @ X / X.shape[0])


def test_gptq_beats_rtn_on_output_error_and_output_error_is_the_data_error():
    W, H, X = problem(rows=64, cols=128, tokens=1000, seed=3)
    rtn = rtn_quantize(W, RTNConfig(bits=4, group_size=32)).dequantize().double()
    for act_order in (False, True):
        gptq = gptq_quantize(W, H, GPTQConfig(bits=4, group_size=32, act_order=act_order)).dequantize().double()
        assert output_error(W, gptq, H) < 0.75 * output_error(W, rtn, H)
    direct = 2 * ((X @ W.T - X @ rtn.T) ** 2).sum() / X.shape[0]
    assert output_error(W, rtn, H) == pytest.approx(float(direct), rel=1e-9)


def test_gptq_float32_close_to_float64_and_keeps_inputs():
    W, H, _ = problem()
    W32, H32 = W.float(), H.float()
    W_copy, H_copy = W32.clone(), H32.clone()
    ours = gptq_quantize(W32, H32, GPTQConfig(bits=4, group_size=32))
    assert torch.equal(W32, W_copy) and torch.equal(H32, H_copy)
    ref = gptq_quantize(W, H, GPTQConfig(bits=4, group_size=32)).dequantize()
    # float32 may flip a rounding tie here and there; almost all codes agree
    assert (ours.dequantize() == ref.float()).float().mean() > 0.98
    assert ours.scales.dtype == torch.float16


def test_gptq_rejects_bad_config():
    with pytest.raises(QuantbenchError, match="bits"):
        GPTQConfig(bits=1)
    with pytest.raises(QuantbenchError, match="damp"):
        GPTQConfig(damp=0)

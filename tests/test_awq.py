"""AWQ: the folding is exact in full precision, the scale search helps where activations have outlier
channels, and the clip search equals a naive per-group search that scores with the activations."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.awq import AWQConfig, clip_search, fold_scale_into_parent, scale_search
from quantbench.methods.gptq import HessianAccumulator, output_error
from quantbench.methods.rtn import RTNConfig, rtn_quantize


def activations(tokens=2000, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g)
    X[:, :4] *= 25  # a few outlier channels, as in LLM activations (AWQ s.3.1)
    acc = HessianAccumulator(cols, "cpu")
    acc.add(X)
    return X, acc.H


def test_fold_into_norm_and_linear_is_exact_in_full_precision():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64)
    norm, mlp = LlamaRMSNorm(32), LlamaMLP(config)
    x = torch.randn(5, 32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        before = mlp(norm(x))
        s_in, s_mid = torch.rand(32) + 0.5, torch.rand(64) + 0.5
        fold_scale_into_parent(norm, s_in)  # norm outputs / s_in ...
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight.mul_(s_in[None, :])  # ... read by columns * s_in
        fold_scale_into_parent(mlp.up_proj, s_mid)
        mlp.down_proj.weight.mul_(s_mid[None, :])
        after = mlp(norm(x))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_fold_rejects_unknown_parent():
    with pytest.raises(QuantbenchError, match="cannot fold"):
        fold_scale_into_parent(torch.nn.ReLU(), torch.ones(3))


def test_scale_search_beats_rtn_on_outlier_channels():
    X, H = activations()
    g = torch.Generator().manual_seed(1)
    Ws = [torch.randn(64, 128, generator=g) * 0.02, torch.randn(96, 128, generator=g) * 0.02]
    config = AWQConfig(bits=4, group_size=32, clip=False)
    s, alpha = scale_search(Ws, H, X.abs().mean(0), [config, config])
    assert 0 < alpha < 1 and s.shape == (128,)
    assert s[:4].min() > s[4:].max()  # outlier channels are protected most
    for W in Ws:
        rtn = rtn_quantize(W, config.rtn()).dequantize()
        awq = rtn_quantize(W * s, config.rtn()).dequantize() / s
        assert output_error(W, awq, H) < 0.7 * output_error(W, rtn, H)


def naive_best_clip(W, X, bits, group_size, max_shrink=0.5, grid=20):
    """For each row and group: try every shrink, score ||X_g (w - Q(clamp(w)))||^2 with the activations."""
    W, X = W.double(), X.double()
    rows, cols = W.shape
    best_loss = torch.empty(rows, cols // group_size, dtype=torch.float64)
    for g in range(cols // group_size):
        cols_g = slice(g * group_size, (g + 1) * group_size)
        Xg = X[:, cols_g]
        for r in range(rows):
            w = W[r, cols_g]
            losses = []
            for k in range(int(max_shrink * grid)):
                m = w.abs().max() * (1 - k / grid)
                c = w.clamp(-m, m)
                q = rtn_quantize(c[None, :], RTNConfig(bits, group_size)).dequantize()[0].double()
                losses.append(float(((Xg @ (w - q)) ** 2).sum()))
            best_loss[r, g] = min(losses)
    return best_loss


def test_clip_search_equals_naive_per_group_search():
    X, H = activations(tokens=500, cols=64, seed=2)
    W = torch.randn(12, 64, generator=torch.Generator().manual_seed(3)) * 0.02
    W[:, 7] *= 8  # an outlier weight in some groups makes clipping worth it
    config = AWQConfig(bits=4, group_size=16)
    ours = clip_search(W, H, config)
    q = rtn_quantize(ours, RTNConfig(4, 16)).dequantize().double()
    expected = naive_best_clip(W, X, 4, 16)
    Wd, Xd = W.double(), X.double()
    for g in range(4):
        cols_g = slice(g * 16, (g + 1) * 16)
        our_loss = ((Xd[:, cols_g] @ (Wd[:, cols_g] - q[:, cols_g]).T) ** 2).sum(0)  # (rows,)
        torch.testing.assert_close(our_loss, expected[:, g], rtol=1e-4, atol=1e-9)
    assert (ours != W).any()  # some group was clipped


def test_awq_config_validation():
    with pytest.raises(QuantbenchError, match="max_shrink"):
        AWQConfig(max_shrink=1.0)

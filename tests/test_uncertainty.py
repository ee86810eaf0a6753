"""Intervals: llama.cpp's formulas against direct float64 statistics, the block bootstrap against
synthetic data whose true standard error is known, paired differences, task-accuracy intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantbench.eval.uncertainty import (
    BootstrapConfig,
    accuracy_interval,
    distinguishable,
    llama_cpp_log_ppl_ratio,
    llama_cpp_mean_and_uncertainty,
    llama_cpp_ppl,
    llama_cpp_proportion,
    mean_interval,
    paired_difference,
    perplexity_interval,
)


def ar1_windows(rng, rho: float, windows: int = 4, tokens: int = 511) -> list[np.ndarray]:
    """Stationary AR(1) per window, unit marginal variance: x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t."""
    out = []
    for _ in range(windows):
        x = np.empty(tokens)
        x[0] = rng.standard_normal()
        noise = rng.standard_normal(tokens) * math.sqrt(1 - rho * rho)
        for t in range(1, tokens):
            x[t] = rho * x[t - 1] + noise[t]
        out.append(x)
    return out


def test_llama_cpp_formulas_equal_direct_float64_statistics():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.5, size=1000)
    mean, df = llama_cpp_mean_and_uncertainty(x.astype(np.float32))
    assert mean == pytest.approx(x.mean(), rel=1e-6)
    # the population std of the values over sqrt(n - 1) is the sample std over sqrt(n)
    assert df == pytest.approx(np.std(x, ddof=1) / math.sqrt(x.size), rel=1e-5)
    ppl, unc = llama_cpp_ppl(x)
    assert ppl == pytest.approx(math.exp(x.mean()), rel=1e-12)
    assert unc == pytest.approx(math.exp(x.mean()) * np.std(x) / math.sqrt(x.size - 1), rel=1e-9)
    # ln(PPL(Q)/PPL(base)) +/-: llama.cpp's covariance form equals the standard error of the differences
    base = x + rng.normal(0.0, 0.3, size=x.size)
    ratio, ratio_unc = llama_cpp_log_ppl_ratio(x, base)
    d = x - base
    assert ratio == pytest.approx(d.mean(), abs=1e-12)
    assert ratio_unc == pytest.approx(np.std(d) / math.sqrt(d.size - 1), rel=1e-6)
    p, sigma = llama_cpp_proportion(919, 1000)
    assert (p, sigma) == pytest.approx((0.919, math.sqrt(0.919 * 0.081 / 999)))
    assert llama_cpp_mean_and_uncertainty(np.ones(5))[1] == 0.0  # llama.cpp prints 0 for n <= 10


def test_block_bootstrap_finds_the_true_standard_error_of_correlated_tokens():
    """AR(1) with rho = 0.6: the true standard error of the mean is sqrt((1 + rho) / (1 - rho)) = 2x the
    per-token one. The block bootstrap gets within 25% of it; llama.cpp's per-token +/- is half of it."""
    rho, windows, tokens = 0.6, 8, 511
    n = windows * tokens
    true_se = math.sqrt((1 + rho) / (1 - rho) / n)  # long-run variance of AR(1), edge terms ~1/n
    config = BootstrapConfig(resamples=1000)
    rng = np.random.default_rng(7)
    half_widths, per_token, covered, covered_naive = [], [], 0, 0
    replicates = 120
    for _ in range(replicates):
        interval = mean_interval(ar1_windows(rng, rho, windows, tokens), config)
        half_widths.append((interval.high - interval.low) / 2 / 1.959964)
        per_token.append(interval.per_token_se)
        covered += interval.contains(0.0)
        covered_naive += abs(interval.estimate) <= 1.959964 * interval.per_token_se
    assert np.mean(half_widths) == pytest.approx(true_se, rel=0.25)
    assert np.mean(per_token) == pytest.approx(math.sqrt(1 / n), rel=0.1)
    assert covered / replicates >= 0.85  # nominal 95%
    assert covered_naive / replicates <= 0.8  # the per-token interval is too narrow (nominal ~68% here)


def test_bootstrap_on_independent_tokens_matches_the_float64_standard_error():
    rng = np.random.default_rng(3)
    values = [rng.exponential(0.05, size=511) for _ in range(16)]
    interval = mean_interval(values, BootstrapConfig(block_tokens=1, resamples=4000))
    x = np.concatenate(values)
    se = np.std(x, ddof=1) / math.sqrt(x.size)
    assert interval.estimate == pytest.approx(x.mean(), rel=1e-12)
    assert (interval.high - interval.low) / 2 / 1.959964 == pytest.approx(se, rel=0.1)
    assert interval.blocks == x.size and interval.enough_blocks


def test_perplexity_interval_on_a_tiny_model_equals_float64_computation(tiny_model, tiny_text_file):
    """Per-token NLL from our float32 evaluation path vs the float64 log-softmax of the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.eval.divergence import log_softmax, token_nll

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = tok(tiny_text_file.read_text()[:40_000], add_special_tokens=False)["input_ids"]
    nll32, nll64 = [], []
    for k in range(4):
        window = torch.tensor(ids[k * 256 : (k + 1) * 256])
        with torch.no_grad():
            logits = model(window[None, :-1]).logits[0]
        nll32.append(token_nll(log_softmax(logits), window[1:]).numpy())
        nll64.append((-torch.log_softmax(logits.double(), -1).gather(-1, window[1:, None])[:, 0]).numpy())
    config = BootstrapConfig()
    ours, oracle = perplexity_interval(nll32, config), perplexity_interval(nll64, config)
    flat = np.concatenate(nll64)
    assert oracle.estimate == pytest.approx(math.exp(flat.mean()), rel=1e-12)
    for a, b in ((ours.estimate, oracle.estimate), (ours.low, oracle.low), (ours.high, oracle.high)):
        assert a == pytest.approx(b, rel=1e-5)
    assert ours.per_token_se == pytest.approx(math.exp(flat.mean()) * np.std(flat) / math.sqrt(flat.size - 1), rel=1e-5)
    assert ours.low < ours.estimate < ours.high
    assert ours.blocks == 4 * math.ceil(255 / 32) and ours.enough_blocks


def test_paired_difference_cancels_the_shared_difficulty():
    """Two methods' KLDs share a per-token difficulty much larger than their gap: separately their intervals
    overlap, paired the gap is resolved and its interval contains the true shift."""
    rng = np.random.default_rng(11)
    difficulty = [np.abs(w) * 0.5 + 0.1 for w in ar1_windows(rng, 0.5, 8, 511)]
    a = [d + 0.01 * rng.standard_normal(d.size) + 0.02 for d in difficulty]
    b = [d + 0.01 * rng.standard_normal(d.size) for d in difficulty]
    ia, ib = mean_interval(a), mean_interval(b)
    assert ia.low < ib.high  # not separable one at a time
    diff = paired_difference(a, b)
    assert diff.contains(0.02) and distinguishable(diff)
    assert diff.high - diff.low < 0.1 * (ia.high - ia.low)
    flat = np.concatenate(a) - np.concatenate(b)
    assert diff.per_token_se == pytest.approx(np.std(flat) / math.sqrt(flat.size - 1), rel=1e-6)
    same = paired_difference(b, [x + 0.0 for x in b])
    assert not distinguishable(same)
    with pytest.raises(Exception, match="same tokens"):
        paired_difference(a, [x[:-1] for x in b])


def test_bootstrap_is_reproducible_and_states_its_method():
    rng = np.random.default_rng(5)
    values = [rng.random(300) for _ in range(2)]
    one, two = mean_interval(values, BootstrapConfig(seed=4)), mean_interval(values, BootstrapConfig(seed=4))
    assert one == two
    assert "32 consecutive" in one.method and "2000 resamples" in one.method and "seed 4" in one.method
    few = mean_interval([rng.random(100)], BootstrapConfig())
    assert few.blocks == 4 and not few.enough_blocks


def test_accuracy_interval_matches_scipy_wilson():
    from scipy.stats import binomtest

    for correct, n in ((6, 8), (0, 8), (8, 8), (37, 50)):
        ours = accuracy_interval(correct, n)
        ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    eight = accuracy_interval(6, 8)
    assert eight.high - eight.low > 0.5  # 8 items: about +/-30 points, as the report must say


def test_the_rows_intervals_are_a_block_bootstrap_of_their_own_tokens():
    """QualityAccumulator (what every row's numbers come from): its intervals equal a float64 block
    bootstrap written here from the raw per-token values (blocks of 32 inside a window, 2000 resamples,
    PCG64 seed 0, 95% percentiles), and its per-token values are the float64 KLD / NLL / top-1 of each token."""
    import torch

    from quantbench.eval.divergence import PER_TOKEN, QualityAccumulator

    gen = torch.Generator().manual_seed(3)
    acc = QualityAccumulator()
    oracle = {"nll": [], "kld": [], "top1": []}
    for tokens in (200, 75, 130):  # windows of unequal length: last blocks are short
        ref = torch.log_softmax(3 * torch.randn(tokens, 50, generator=gen, dtype=torch.float64), -1)
        cand = torch.log_softmax(ref + 0.3 * torch.randn(tokens, 50, generator=gen, dtype=torch.float64), -1)
        targets = torch.randint(0, 50, (tokens,), generator=gen)
        acc.add(cand.float(), targets, ref.float())
        oracle["nll"].append((-cand.gather(-1, targets[:, None])[:, 0]).numpy())
        oracle["kld"].append((ref.exp() * (ref - cand)).sum(-1).numpy())
        oracle["top1"].append((ref.argmax(-1) == cand.argmax(-1)).double().numpy())
    summary = acc.summary()

    def bootstrap(windows):
        sums, counts = [], []
        for w in windows:
            for start in range(0, len(w), 32):
                sums.append(w[start : start + 32].sum())
                counts.append(len(w[start : start + 32]))
        sums, counts = np.array(sums), np.array(counts, dtype=np.float64)
        picks = np.random.default_rng(0).integers(0, len(sums), size=(2000, len(sums)))
        means = sums[picks].sum(1) / counts[picks].sum(1)
        return np.quantile(means, [0.025, 0.975])

    low, high = np.exp(bootstrap(oracle["nll"]))
    assert (summary["ppl_interval"]["low"], summary["ppl_interval"]["high"]) == pytest.approx((low, high), rel=1e-5)
    for key, name in (("kld_mean", "kld"), ("top1_agreement", "top1")):
        low, high = bootstrap(oracle[name])
        iv = summary[f"{key}_interval"]
        assert iv["estimate"] == pytest.approx(summary[key], rel=1e-6)
        assert (iv["low"], iv["high"]) == pytest.approx((low, high), rel=1e-4, abs=1e-9)
        assert iv["low"] < summary[key] < iv["high"] and iv["blocks"] == 7 + 3 + 5 and iv["tokens"] == 405
        flat = np.concatenate(oracle[name])
        assert iv["per_token_se"] == pytest.approx(np.std(flat) / math.sqrt(flat.size - 1), rel=1e-4)
    per_token = summary[PER_TOKEN]
    for name in ("nll", "kld", "top1"):
        assert [len(w) for w in per_token[name]] == [200, 75, 130]
        assert np.concatenate(per_token[name]) == pytest.approx(np.concatenate(oracle[name]), rel=1e-4, abs=1e-6)

"""How sure a quality number is: block-bootstrap intervals, llama.cpp's per-token +/-, paired differences.

Why a block bootstrap. Neighbouring tokens of one text are correlated (a hard passage makes several
tokens in a row hard), so the per-token standard error sigma/sqrt(n) that llama.cpp's perplexity tool
prints is too narrow, and a bootstrap over 4 windows has 4 points to resample. The non-overlapping
block bootstrap (Carlstein 1986; Kunsch 1989 for the moving-block variant) resamples contiguous blocks
of tokens instead: correlation inside a block is kept, blocks far apart are treated as independent.

The method, stated once (`BootstrapConfig`), and written into every interval's `method` string:
- each evaluation window's scored tokens are cut into consecutive blocks of `block_tokens` tokens
  (a window's last, shorter block is kept; blocks never span two windows);
- `resamples` times, as many blocks as there are are drawn with replacement (numpy PCG64, `seed`);
- the statistic of a resample is the ratio of sums (sum of values / number of tokens), so shorter
  blocks weigh what they hold; perplexity is exp of the resampled mean NLL;
- the interval is the percentile interval at `confidence` (default 95%).
Fewer than `min_blocks` blocks are reported with `enough_blocks: false` (the interval is then only
indicative), never hidden.

Paired differences: two methods scored on the very same tokens give per-token differences
d_t = a_t - b_t; the SAME resampled blocks are used for both, i.e. d is bootstrapped. The common
per-token difficulty cancels, so the interval of a difference is much narrower than the two separate
intervals suggest.

llama.cpp's own numbers (tools/perplexity/perplexity.cpp, `mean_and_uncertainty`, `kl_divergence`),
given beside ours for comparability:
- mean and uncertainty of per-token values x: f = sum x / n, df = sqrt((sum x^2 / n - f^2) / (n - 1))
  (0 when n <= 10);
- PPL = exp(mean NLL) +/- PPL * df(NLL);
- ln(PPL(Q)/PPL(base)) +/- sqrt(df_Q^2 + df_base^2 - 2 cov), cov = (sum ab / n - mean a mean b) / (n - 1);
- mean KLD +/- df(KLD); same top token p +/- sqrt(p (1 - p) / (n - 1)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class BootstrapConfig:
    block_tokens: int = 32  # consecutive scored tokens per block; the per-token NLL/KLD autocorrelation
    # of prose dies out within a few tokens, so 32 keeps nearly all of it inside a block while
    # 4 default windows of 512 still give 64 blocks
    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95
    min_blocks: int = 20

    def __post_init__(self):
        if self.block_tokens < 1:
            raise QuantbenchError("bootstrap block_tokens must be at least 1")
        if self.resamples < 100:
            raise QuantbenchError("use at least 100 bootstrap resamples")
        if not 0.5 <= self.confidence < 1:
            raise QuantbenchError("bootstrap confidence must be in [0.5, 1)")

    def describe(self, blocks: int) -> str:
        return (f"block bootstrap: {blocks} blocks of <= {self.block_tokens} consecutive scored tokens "
                f"(never across windows), {self.resamples} resamples, seed {self.seed}, "
                f"{100 * self.confidence:g}% percentile interval")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and llama.cpp's per-token +/- beside it."""

    estimate: float
    low: float
    high: float
    per_token_se: float  # llama.cpp-style +/- (one standard error, tokens treated as independent)
    tokens: int
    blocks: int
    enough_blocks: bool
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def compact(self, digits: int = 3) -> str:
        """'0.0312 [0.0281, 0.0349]' with `digits` significant digits."""
        fmt = lambda v: f"{v:.{digits}g}"  # noqa: E731
        return f"{fmt(self.estimate)} [{fmt(self.low)}, {fmt(self.high)}]"


# ---------------------------------------------------------------------------------------------------
# llama.cpp's per-token formulas (tools/perplexity/perplexity.cpp)


def llama_cpp_mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """perplexity.cpp `mean_and_uncertainty(sum, sum2, count)`: the mean and sqrt(var / (n - 1))."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 1:
        return 0.0, 0.0
    f = x.sum() / n
    df = (x * x).sum() / n - f * f
    return float(f), float(math.sqrt(df / (n - 1))) if df > 0 and n > 10 else 0.0


def llama_cpp_covariance(a: np.ndarray, b: np.ndarray) -> float:
    """perplexity.cpp `covariance(suma, sumb, sumab, count)`: the covariance of the two means."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = a.size
    if n < 10:
        return 0.0
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


def llama_cpp_ppl(nll: np.ndarray) -> tuple[float, float]:
    """'Mean PPL(Q) : ppl +/- ppl * df(nll)'."""
    mean, df = llama_cpp_mean_and_uncertainty(nll)
    ppl = math.exp(mean)
    return ppl, ppl * df


def llama_cpp_log_ppl_ratio(nll: np.ndarray, nll_base: np.ndarray) -> tuple[float, float]:
    """'Mean ln(PPL(Q)/PPL(base)) : mean(nll) - mean(nll_base) +/- sqrt(df^2 + df_base^2 - 2 cov)'."""
    mean, df = llama_cpp_mean_and_uncertainty(nll)
    mean_base, df_base = llama_cpp_mean_and_uncertainty(nll_base)
    variance = df * df + df_base * df_base - 2.0 * llama_cpp_covariance(nll, nll_base)
    return mean - mean_base, math.sqrt(max(variance, 0.0))


def llama_cpp_proportion(successes: int, n: int) -> tuple[float, float]:
    """'Same top p : p +/- sqrt(p (1 - p) / (n - 1))' (also its multiple-choice 'Final result')."""
    if n < 2:
        return (successes / n if n else 0.0), 0.0
    p = successes / n
    return p, math.sqrt(p * (1 - p) / (n - 1))


# ---------------------------------------------------------------------------------------------------
# Block bootstrap


def _blocks(windows: Sequence[np.ndarray], block_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block sums and token counts; `windows` holds one (tokens,) or (tokens, k) array per window."""
    sums, counts = [], []
    for values in windows:
        values = np.asarray(values, dtype=np.float64)
        for start in range(0, len(values), block_tokens):
            block = values[start : start + block_tokens]
            sums.append(block.sum(axis=0))
            counts.append(len(block))
    if not counts:
        raise QuantbenchError("no scored tokens to compute an interval from")
    return np.array(sums), np.array(counts, dtype=np.float64)


def bootstrap_means(windows: Sequence[np.ndarray], config: BootstrapConfig) -> tuple[np.ndarray, int]:
    """(resamples,) or (resamples, k) resampled means of per-token values, and the number of blocks."""
    sums, counts = _blocks(windows, config.block_tokens)
    rng = np.random.default_rng(config.seed)
    picks = rng.integers(0, len(counts), size=(config.resamples, len(counts)))  # (resamples, blocks)
    total = counts[picks].sum(axis=1)  # (resamples,)
    if sums.ndim == 1:
        return sums[picks].sum(axis=1) / total, len(counts)
    return sums[picks].sum(axis=1) / total[:, None], len(counts)


def _interval(estimate: float, resampled: np.ndarray, per_token_se: float, tokens: int, blocks: int,
              config: BootstrapConfig, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Interval:
    tail = (1 - config.confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    if transform is not None:
        low, high = transform(np.array([low, high]))
    return Interval(float(estimate), float(low), float(high), float(per_token_se), tokens, blocks,
                    blocks >= config.min_blocks, config.describe(blocks))


def _concat(windows: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).reshape(-1) for w in windows])


def mean_interval(windows: Sequence[np.ndarray], config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Mean of per-token values (KLD, NLL, 0/1 top-1 agreement), one array per evaluation window."""
    x = _concat(windows)
    resampled, blocks = bootstrap_means(windows, config)
    mean, se = llama_cpp_mean_and_uncertainty(x)
    return _interval(mean, resampled, se, x.size, blocks, config)


def perplexity_interval(nll_windows: Sequence[np.ndarray], config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """PPL = exp(mean NLL): the interval is exp of the NLL-mean interval (exp is monotone)."""
    nll = _concat(nll_windows)
    resampled, blocks = bootstrap_means(nll_windows, config)
    ppl, se = llama_cpp_ppl(nll)
    return _interval(ppl, resampled, se, nll.size, blocks, config, transform=np.exp)


def paired_difference(a_windows: Sequence[np.ndarray], b_windows: Sequence[np.ndarray],
                      config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Mean of a - b over the same tokens (e.g. KLD of method A minus KLD of method B), paired per token.

    `per_token_se` is llama.cpp's sqrt(df_a^2 + df_b^2 - 2 cov), the same as the per-token standard
    error of the differences."""
    if [len(a) for a in a_windows] != [len(b) for b in b_windows]:
        raise QuantbenchError("paired differences need both methods scored on the very same tokens "
                              "(same reference, text and protocol); the token counts differ")
    diffs = [np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) for a, b in zip(a_windows, b_windows)]
    a, b = _concat(a_windows), _concat(b_windows)
    mean_a, df_a = llama_cpp_mean_and_uncertainty(a)
    mean_b, df_b = llama_cpp_mean_and_uncertainty(b)
    se = math.sqrt(max(df_a * df_a + df_b * df_b - 2.0 * llama_cpp_covariance(a, b), 0.0))
    resampled, blocks = bootstrap_means(diffs, config)
    return _interval(mean_a - mean_b, resampled, se, a.size, blocks, config)


def log_ppl_ratio_interval(nll_windows: Sequence[np.ndarray], nll_base_windows: Sequence[np.ndarray],
                           config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """ln(PPL(Q)/PPL(base)) = mean(nll - nll_base), paired per token (llama.cpp prints the same quantity)."""
    return paired_difference(nll_windows, nll_base_windows, config)


def distinguishable(difference: Interval) -> bool:
    """Two methods differ under the bootstrap rule when the paired difference's interval excludes 0."""
    return not difference.contains(0.0)


# ---------------------------------------------------------------------------------------------------
# Task accuracy: items are independent, so the interval is over items


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927); sane for small n and p near 0 or 1."""
    if n < 1:
        raise QuantbenchError("an accuracy interval needs at least one item")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> Interval:
    """Task accuracy with a Wilson interval; llama.cpp's sqrt(p (1 - p) / (n - 1)) as per-token (per-item) se."""
    low, high = wilson_interval(correct, n, confidence)
    p, se = llama_cpp_proportion(correct, n)
    method = f"Wilson score {100 * confidence:g}% interval over {n} independent items"
    return Interval(p, low, high, se, n, n, n >= 30, method)

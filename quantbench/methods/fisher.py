"""Diagonal of the Fisher information of a causal LM on calibration text: the curvature of KL divergence.

For one scored position t with reference next-token distribution p_t, KL(p_t || q_t(W + d)) has zero
gradient at d = 0 and Hessian F_t = E_{y ~ p_t}[g_t(y) g_t(y)^T], g_t(y) = d log p_t(y) / dW (the Fisher).
So the mean KL over T positions after a small change d of the weights is

    mean KLD  ~  1/2 d^T Fbar d,   Fbar = (1/T) sum_t F_t,   diagonal: 1/2 sum_i Fbar_ii d_i^2

Estimator of diag(Fbar), one backward pass per sequence: draw y_t ~ p_t at every position (labels
sampled from the model itself, not the text: the true Fisher, not the "empirical" one), backpropagate
G = d/dW sum_t log p_t(y_t) and accumulate G * G. Because E_y[g_t] = 0 and the draws are independent,
the cross terms g_t * g_s (t != s) vanish in expectation, so sum over sequences of G^2 / T is an
unbiased estimate of diag(Fbar). It is noisy per element; what matters is its sum weighted by the
squared rounding error, which averages over many elements (sensitivity.py checks it against direct
measurements).

Format-neutral result: HF parameter name -> (rows, cols) float32 tensor, per scored token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FisherConfig:
    draws: int = 1  # sampled-label backward passes per sequence
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.draws < 1:
            raise QuantbenchError("FisherConfig.draws must be at least 1")


@dataclass(frozen=True)
class FisherDiagonal:
    values: dict[str, torch.Tensor]  # HF weight name -> same shape as the weight, float32, per token
    tokens: int  # scored positions T (times draws)
    sequences: int


def fisher_diagonal(model: torch.nn.Module, sequences: Sequence[Sequence[int]], names: Sequence[str],
                    config: FisherConfig = FisherConfig(), progress: Callable[[int, int], None] | None = None) -> FisherDiagonal:
    """diag(Fbar) for the parameters called `names` of an HF causal LM, from `sequences` of token ids."""
    if not sequences:
        raise QuantbenchError("the Fisher diagonal needs calibration text: no calibration sequences were given")
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise QuantbenchError(f"the model has no parameter {missing[0]}")
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    wanted = {n: params[n] for n in names}
    for p in wanted.values():
        p.requires_grad_(True)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in wanted.items()}  # sum over passes of G^2
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    tokens = 0
    steps = len(sequences) * config.draws
    try:
        for k, ids in enumerate(sequences):
            x = torch.tensor([list(ids)], device=device)
            for d in range(config.draws):
                model.zero_grad(set_to_none=True)
                logprobs = torch.log_softmax(model(x, use_cache=False).logits[0].float(), dim=-1)  # (T, vocab)
                with torch.no_grad():
                    y = torch.multinomial(logprobs.exp().cpu(), 1, generator=generator)[:, 0].to(device)  # (T,)
                logprobs.gather(-1, y[:, None]).sum().backward()
                for n, p in wanted.items():
                    sums[n] += p.grad.float() ** 2
                tokens += len(ids)
                if progress:
                    progress(k * config.draws + d + 1, steps)
    finally:
        for p in wanted.values():
            p.requires_grad_(False)
            p.grad = None
    values = {n: (s / tokens).cpu() for n, s in sums.items()}
    return FisherDiagonal(values, tokens, len(sequences))

"""16-bit reference storage: round trip on the grid, the cached reference, and what it costs on KLD against float64 math."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.eval.divergence import QualityAccumulator, token_kld
from quantbench.eval.logprob_codec import LOG_RANGE, LEVELS, decode_logprobs, encode_logprobs


def peaked_logprobs(tokens: int, vocab: int, sharpness: float, seed: int) -> torch.Tensor:
    """Zipf-like next-token distributions: a few likely tokens, a long tail (like a real LM)."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    base = -sharpness * torch.log(ranks)  # (vocab,)
    logits = base[torch.stack([torch.randperm(vocab, generator=g) for _ in range(tokens)])]
    logits = logits + 0.5 * torch.randn(tokens, vocab, generator=g, dtype=torch.float64)
    return torch.log_softmax(logits, -1)


def test_round_trip_is_within_half_a_grid_step():
    lp = peaked_logprobs(64, 3000, 1.2, 0).float()
    codes, scale_floor = encode_logprobs(lp)
    assert codes.dtype == torch.uint16 and codes.shape == lp.shape and scale_floor.shape == (64, 2)
    decoded = decode_logprobs(codes, scale_floor)
    top = lp.max(-1, keepdim=True).values
    kept = lp > top - LOG_RANGE + 1e-3
    step = LOG_RANGE / LEVELS
    # renormalization moves every kept value by the same tiny amount: compare after removing it
    shift = (decoded - lp)[kept].median()
    assert shift.abs() < 2 * step
    assert ((decoded - lp - shift)[kept].abs().max()) <= 0.5 * step + 1e-5
    assert torch.isneginf(decoded[~kept & (lp < top - LOG_RANGE - 1e-3)]).all()
    assert torch.allclose(decoded.exp().sum(-1), torch.ones(64), atol=1e-5)


def test_narrow_rows_keep_their_minimum_and_flat_rows_survive():
    lp = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]]), -1)
    decoded = decode_logprobs(*encode_logprobs(lp))
    assert torch.allclose(decoded, lp, atol=1e-4)


@pytest.mark.parametrize("noise", [0.01, 0.3, 1.5])
def test_kld_from_16bit_reference_matches_float64_exact(noise):
    """Candidates from near-lossless (mean KLD ~1e-4) to poor (~0.5): the 16-bit reference changes the
    mean KLD by under 0.1% of itself (the default model's figure is in benchmarks/RESULTS.md), and no
    token's KLD by more than 1e-4 nats per nat of the largest KLD."""
    ref = peaked_logprobs(256, 4096, 1.1, 1)
    g = torch.Generator().manual_seed(2)
    cand = torch.log_softmax(ref + noise * torch.randn(ref.shape, generator=g, dtype=torch.float64), -1)
    exact = (ref.exp() * (ref - cand)).sum(-1)  # float64
    decoded = decode_logprobs(*encode_logprobs(ref.float())).double()
    compact = token_kld(decoded, cand)
    assert abs(float(compact.mean() - exact.mean())) <= 1e-3 * float(exact.mean()) + 1e-8
    assert float((compact - exact).abs().max()) <= 1e-4 * max(1.0, float(exact.max()))


def test_a_near_tie_keeps_the_references_argmax():
    """Top-1 agreement reads the decoded reference's argmax: a runner-up within half a grid step of the
    top must not tie with it (it would take its place wherever it comes first)."""
    step = LOG_RANGE / LEVELS
    logits = torch.tensor([[0.0, -0.1 * step, -30.0, -40.0], [-0.1 * step, 0.0, -30.0, -40.0]])
    decoded = decode_logprobs(*encode_logprobs(torch.log_softmax(logits, -1)))
    assert decoded.argmax(-1).tolist() == [0, 1]


def test_kld_ignores_how_well_each_side_was_normalized():
    """torch's float32 log-softmax sums to 1 only within ~3e-5 on a real vocabulary; the decoded reference
    is renormalized. token_kld renormalizes both sides in float64, so an unnormalized candidate (here off
    by a constant 3e-5 nats) scores its exact KLD; KL summed as given would be off by the whole offset."""
    ref = peaked_logprobs(32, 2000, 1.1, 3)
    g = torch.Generator().manual_seed(4)
    cand = torch.log_softmax(ref + 0.01 * torch.randn(ref.shape, generator=g, dtype=torch.float64), -1)
    exact = (ref.exp() * (ref - cand)).sum(-1)
    assert float(exact.mean()) < 1e-4  # near-lossless: the offset would be a large share of it
    assert torch.allclose(token_kld(ref, cand + 3e-5), exact, rtol=1e-9, atol=1e-12)
    assert torch.allclose(token_kld(ref - 3e-5, cand), exact, rtol=1e-9, atol=1e-12)


class _PeakedRuntime:
    """Logits of Zipf-like distributions (a real LM's shape), the same for the same ids."""

    def __init__(self, noise: float = 0.0):
        self.noise = noise

    def logits(self, ids):
        base = peaked_logprobs(len(ids), 3000, 1.1, sum(ids))
        g = torch.Generator().manual_seed(7 + sum(ids))
        return (base + self.noise * torch.randn(base.shape, generator=g, dtype=torch.float64)).float()


def test_cached_reference_scores_like_float64_math(tmp_path):
    """Through the cache (16-bit codes, exact target log-probs) and the accumulator that scores every
    method: the reference's PPL equals exp(mean NLL) in float64, a candidate's mean KLD and top-1
    agreement equal float64 math on the full-precision logits."""
    from quantbench.eval.perplexity import Window
    from quantbench.eval.reference import Reference, compute_reference, reference_quality

    windows = [Window(list(range(s, s + 40)), list(range(s + 9, s + 41)), 8) for s in (0, 100, 200)]
    path = tmp_path / "ref.safetensors"
    compute_reference(_PeakedRuntime(), windows, path, {"test": True})
    ref = Reference(path)
    assert "16-bit" in ref.meta["storage"]
    nll, kld, agree = [], [], []
    quality = QualityAccumulator()
    for k, w in enumerate(windows):
        exact_ref = torch.log_softmax(_PeakedRuntime().logits(w.input_ids)[w.first_scored:].double(), -1)
        cand = torch.log_softmax(_PeakedRuntime(0.05).logits(w.input_ids)[w.first_scored:], -1)
        targets = torch.tensor(w.targets)
        nll.append(-exact_ref.gather(-1, targets[:, None])[:, 0])
        kld.append((exact_ref.exp() * (exact_ref - cand.double().log_softmax(-1))).sum(-1))
        agree.append((exact_ref.argmax(-1) == cand.argmax(-1)).double())
        quality.add(cand, ref.targets(k), ref.logprobs(k))
    summary = quality.summary()
    exact_kld = float(torch.cat(kld).mean())
    assert reference_quality(ref)["ppl"] == pytest.approx(float(torch.cat(nll).mean().exp()), rel=1e-6)
    assert summary["kld_mean"] == pytest.approx(exact_kld, rel=1e-3)
    assert summary["top1_agreement"] == float(torch.cat(agree).mean())


def test_a_reference_of_the_old_layout_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    from quantbench.eval.reference import Reference

    path = tmp_path / "old.safetensors"
    save_file({"logprobs.0": torch.zeros(2, 5), "targets.0": torch.zeros(2, dtype=torch.int64)}, str(path),
              metadata={"quantbench": "{}"})
    with pytest.raises(QuantbenchError, match="not a quantbench reference of this version.*delete it"):
        Reference(path)

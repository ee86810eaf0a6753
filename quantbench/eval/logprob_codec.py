"""16-bit storage of the reference's log-probabilities, as llama.cpp's KL-divergence base files keep them.

A full fp32 log-softmax costs 4 bytes per vocabulary entry per scored token: 196 KB per token on a
49k vocabulary, 1 MB on Gemma-3's 262k. llama.cpp's `llama-perplexity --kl-divergence-base` stores
each token's log-probabilities as uint16 on a uniform grid instead (tools/perplexity/perplexity.cpp,
`log_softmax(n_vocab, logits, uint16_t * log_prob, tok)`); we do the same, per scored token:

    top   = max_v lp(v)                         lp = log-softmax, float32
    floor = max(min_v lp(v), top - LOG_RANGE)   llama.cpp: LOG_RANGE = 16 nats
    scale = (top - floor) / 65535
    code  = round((lp - floor) / scale)  for lp > floor, else 0     (uint16)

    +-----------------+----------------+-------------------------------+
    | scale (float32) | floor (float32)| codes: vocab x uint16         |
    +-----------------+----------------+-------------------------------+

so 2 bytes per entry plus 8 per token (half of fp32). Decoding differs from llama.cpp in two
deliberate ways: code 0 of a clamped token (its true log-prob was at or below the floor, i.e. at
least LOG_RANGE nats below the top) decodes to probability 0, as llama.cpp's KLD loop skips it, and
the decoded distribution is renormalized so it sums to 1 (rounding leaves it off by ~1e-4).

Precision: the grid step is LOG_RANGE / 65535 = 2.4e-4 nats, so a decoded log-prob is within 1.2e-4
of the original; measured on the default model in benchmarks/RESULTS.md ("Compact reference").
"""

from __future__ import annotations

import torch

LOG_RANGE = 16.0  # nats below the top kept on the grid (llama.cpp's constant)
LEVELS = 65535  # uint16


def encode_logprobs(logprobs: torch.Tensor, log_range: float = LOG_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, vocab) float log-probs -> (codes (tokens, vocab) uint16, scale_floor (tokens, 2) float32)."""
    lp = logprobs.float()
    top = lp.max(dim=-1, keepdim=True).values  # (tokens, 1)
    floor = torch.maximum(lp.min(dim=-1, keepdim=True).values, top - log_range)  # (tokens, 1)
    scale = (top - floor) / LEVELS  # (tokens, 1); 0 for a one-hot-flat row (all equal)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.where(lp > floor, torch.round((lp - floor) / safe), torch.zeros_like(lp)).clamp_(0, LEVELS)
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes))
    # uint16 is stored through int32 -> uint16 (torch has uint16 since 2.3)
    return codes.to(torch.int32).to(torch.uint16), torch.cat([scale, floor], dim=-1)


def decode_logprobs(codes: torch.Tensor, scale_floor: torch.Tensor, log_range: float = LOG_RANGE) -> torch.Tensor:
    """(tokens, vocab) float32 log-probs; clamped entries -inf; each row renormalized to sum to 1."""
    scale, floor = scale_floor[:, :1].float(), scale_floor[:, 1:2].float()
    values = floor + scale * codes.to(torch.int32).float()  # (tokens, vocab)
    # Code 0 is "at or below the floor". Where the floor is the row's true minimum (the row spans less
    # than log_range) it is that real value; where the floor was clamped it stands for "negligible".
    was_clamped = scale * LEVELS >= log_range * (1 - 1e-6)  # (tokens, 1)
    clamped = (codes.to(torch.int32) == 0) & was_clamped
    values = torch.where(clamped, torch.full_like(values, float("-inf")), values)
    return values - torch.logsumexp(values, dim=-1, keepdim=True)


def kld_from_decoded(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P_ref || Q) per token where P_ref may hold exact zeros (-inf log-probs): 0 * anything = 0."""
    p = ref_logprobs.exp()
    terms = torch.where(p > 0, p * (ref_logprobs - logprobs.float()), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def bytes_per_token(vocab: int) -> int:
    return 2 * vocab + 8

"""16-bit storage of the reference's log-probabilities, after llama.cpp's KL-divergence base files.

A full fp32 log-softmax costs 4 bytes per vocabulary entry per scored token: 196 KB per token on a
49k vocabulary, 1 MB on Gemma-3's 262k. llama.cpp's `llama-perplexity --kl-divergence-base` stores
each token's log-probabilities as uint16 on a uniform grid instead (tools/perplexity/perplexity.cpp,
`log_softmax(n_vocab, logits, uint16_t * log_prob, tok)`); we do the same, per scored token:

    top   = max_v lp(v)                         lp = log-softmax, float32
    floor = max(min_v lp(v), top - LOG_RANGE)
    scale = (top - floor) / 65535
    code  = round((lp - floor) / scale)  for lp > floor, else 0     (uint16)
            capped at 65534 for every entry but the top one, so the reference's argmax survives

    +-----------------+----------------+-------------------------------+
    | scale (float32) | floor (float32)| codes: vocab x uint16         |
    +-----------------+----------------+-------------------------------+

so 2 bytes per entry plus 8 per token (half of fp32). Differences from llama.cpp, each measured on
the default model (benchmarks/compact_reference_precision.py, benchmarks/RESULTS.md "Compact reference"):
- LOG_RANGE is 32 nats, not llama.cpp's 16. Dropping everything 16 nats below the top moved every mean
  KLD by about +1.8e-4 nats, 3.5x a bf16 model's true KLD; at 32 nats the stored reference's KLD
  against the exact one (the floor it adds to every row) is 5e-9 nats per token on average.
- Code 0 of a clamped token (its log-prob was at least LOG_RANGE nats below the top) decodes to
  probability 0, as llama.cpp's KLD loop skips it; the decoded row is renormalized.
The KLD is then computed in float64 with both sides renormalized (eval/divergence.token_kld): torch's
float32 log-softmax sums to 1 only within ~3e-5 on a 49k vocabulary, an error as large as a
near-lossless method's whole KLD once the reference side is renormalized and the candidate's is not.
"""

from __future__ import annotations

import torch

LOG_RANGE = 32.0  # nats below the top kept on the grid
LEVELS = 65535  # uint16


def encode_logprobs(logprobs: torch.Tensor, log_range: float = LOG_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, vocab) float log-probs -> (codes (tokens, vocab) uint16, scale_floor (tokens, 2) float32)."""
    lp = logprobs.float()
    top = lp.max(dim=-1, keepdim=True).values  # (tokens, 1)
    floor = torch.maximum(lp.min(dim=-1, keepdim=True).values, top - log_range)  # (tokens, 1)
    scale = (top - floor) / LEVELS  # (tokens, 1); 0 for a flat row (all equal)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.where(lp > floor, torch.round((lp - floor) / safe), torch.zeros_like(lp)).clamp_(0, LEVELS)
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes))
    # A runner-up within half a step of the top would round to the top's code and tie with it: cap
    # every other entry one step lower, so the decoded argmax is the reference's (top-1 agreement).
    is_top = torch.zeros_like(lp, dtype=torch.bool).scatter_(-1, lp.argmax(-1, keepdim=True), True)
    codes = torch.where(is_top | (scale == 0), codes, codes.clamp(max=LEVELS - 1))
    # uint16 is stored through int32 -> uint16 (torch has uint16 since 2.3)
    return codes.to(torch.int32).to(torch.uint16), torch.cat([scale, floor], dim=-1)


def decode_logprobs(codes: torch.Tensor, scale_floor: torch.Tensor, log_range: float = LOG_RANGE, rows: int = 64) -> torch.Tensor:
    """(tokens, vocab) float32 log-probs; clamped entries -inf; each row renormalized to sum to 1.
    `rows` tokens at a time, so the temporaries stay small beside the output (262k vocabulary)."""
    out = torch.empty(codes.shape, dtype=torch.float32)
    for start in range(0, len(codes), rows):
        part = slice(start, start + rows)
        scale, floor = scale_floor[part, :1].float(), scale_floor[part, 1:2].float()
        code = codes[part].to(torch.int32)
        values = floor + scale * code.float()  # (rows, vocab)
        # Code 0 is "at or below the floor". Where the floor is the row's true minimum (the row spans
        # less than log_range) it is that real value; where the floor was clamped it stands for "negligible".
        was_clamped = scale * LEVELS >= log_range * (1 - 1e-6)  # (rows, 1)
        values.masked_fill_((code == 0) & was_clamped, float("-inf"))
        out[part] = values - torch.logsumexp(values, dim=-1, keepdim=True)
    return out


def bytes_per_token(vocab: int) -> int:
    return 2 * vocab + 8

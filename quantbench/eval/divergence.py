"""Quality of a quantized model's next-token distributions against the full-precision reference.

Per scored token t: KLD_t = sum_v P_ref(v) * (log P_ref(v) - log Q(v)), the KL divergence of the
candidate Q from the reference P_ref, as llama.cpp's `llama-perplexity --kl-divergence` reports it
(llama.cpp PR 5076/6936); top-1 agreement = fraction of tokens where argmax Q == argmax P_ref.
Log-softmax in float32; the KLD sum in float64 (token_kld says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quantbench.eval.metrics import register_window_metric


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def token_nll(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per position; logprobs (tokens, vocab), targets (tokens,)."""
    return -logprobs.gather(-1, targets[:, None].long())[:, 0]


def token_kld(ref_logprobs: torch.Tensor, logprobs: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """KL(P_ref || Q) per position, both (tokens, vocab) log-probabilities; float64 (tokens,).

    In float64, each side renormalized there: torch's float32 log-softmax sums to 1 only within ~3e-5
    on a 49k vocabulary, as large as a near-lossless method's whole KLD once the two sides' errors stop
    cancelling (the 16-bit reference is renormalized when decoded, eval/logprob_codec.py). Entries with
    P_ref = 0 (-inf: below the 16-bit reference's floor) contribute nothing. `rows` tokens at a time
    bounds the float64 copies (a 262k vocabulary: 134 MB each)."""
    out = []
    for start in range(0, len(ref_logprobs), rows):
        ref = ref_logprobs[start : start + rows].double()
        ref = ref - ref.logsumexp(-1, keepdim=True)
        q = logprobs[start : start + rows].double()
        q = q - q.logsumexp(-1, keepdim=True)
        p = ref.exp()
        out.append(torch.where(p > 0, p * (ref - q), torch.zeros_like(p)).sum(-1))
    return torch.cat(out).clamp_min(0.0)


# Metrics key of the per-token values (one list per window): they travel from the evaluation to the
# parent for paired differences between methods (report/recommend.py) and are not written into rows.
PER_TOKEN = "per_token"


@dataclass
class QualityAccumulator:
    """Streams windows in; summarizes PPL, KLD statistics and top-1 agreement at the end, each mean with
    its block-bootstrap interval (eval/uncertainty.py; llama.cpp's per-token +/- beside it), and hands
    back the per-token values under PER_TOKEN."""

    nll_sum: float = 0.0
    scored: int = 0
    klds: list[torch.Tensor] = field(default_factory=list)
    agree: int = 0
    nlls: list[torch.Tensor] = field(default_factory=list)  # per window, for the intervals
    agrees: list[torch.Tensor] = field(default_factory=list)

    def add(self, logprobs: torch.Tensor, targets: torch.Tensor, ref_logprobs: torch.Tensor | None) -> None:
        nll = token_nll(logprobs, targets).double()
        self.nlls.append(nll)
        self.nll_sum += float(nll.sum())
        self.scored += len(targets)
        if ref_logprobs is not None:
            self.klds.append(token_kld(ref_logprobs, logprobs))
            same_top = ref_logprobs.argmax(-1) == logprobs.argmax(-1)
            self.agrees.append(same_top.double())
            self.agree += int(same_top.sum())

    def summary(self) -> dict:
        import math

        from quantbench.eval.uncertainty import mean_interval, perplexity_interval

        per_window = lambda values: [v.double().numpy() for v in values]  # noqa: E731
        out = {"ppl": math.exp(self.nll_sum / self.scored), "scored_tokens": self.scored, "nll_mean": self.nll_sum / self.scored,
               "ppl_interval": perplexity_interval(per_window(self.nlls)).to_dict()}
        per_token = {"nll": [v.tolist() for v in self.nlls]}
        if self.klds:
            k = torch.cat(self.klds).double()
            out.update(
                kld_mean=float(k.mean()),
                kld_median=float(k.median()),
                kld_p99=float(torch.quantile(k, 0.99)),
                kld_max=float(k.max()),
                top1_agreement=self.agree / self.scored,
                kld_mean_interval=mean_interval(per_window(self.klds)).to_dict(),
                top1_agreement_interval=mean_interval(per_window(self.agrees)).to_dict(),
            )
            per_token.update(kld=[v.double().tolist() for v in self.klds], top1=[v.tolist() for v in self.agrees])
        out[PER_TOKEN] = per_token
        return out


register_window_metric("quality", QualityAccumulator)

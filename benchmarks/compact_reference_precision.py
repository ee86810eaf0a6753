"""What the 16-bit reference storage (quantbench/eval/logprob_codec.py) costs on KLD, measured.

For the default model (or --model), N windows of 512 tokens of the default text; three candidates of
known, very different quality: the model with bf16-rounded weights (KLD ~1e-4), RTN symmetric 4-bit
group-128 weights, and RTN 3-bit group-128. Each candidate's mean KLD is computed
- exactly: float64 logits of both models, float64 log-softmax;
- as quantbench computes it from an fp32 reference (float32 log-softmax, eval/divergence.token_kld);
- from the 16-bit stored reference at 16 nats (llama.cpp's range), 24 and 32 nats (LOG_RANGE), with
  token_kld, and the old way (float32 sum, the candidate not renormalized).
Also the stored reference's own KLD against the exact one (the floor it adds). Reported: each mean,
its difference from the exact one, the largest per-token difference. Writes JSON to benchmarks/results/.

    PYTHONPATH=. python3 benchmarks/compact_reference_precision.py [--model M] [--windows 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def rtn_symmetric(W: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest, symmetric, absmax per group of `group_size` along a row."""
    rows, cols = W.shape
    g = W.reshape(rows, cols // group_size, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(g / scale).clamp(-qmax - 1, qmax) * scale).reshape(rows, cols)


def candidate(model, kind: str):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() != 2:
                continue
            if kind == "bf16-weights":
                p.copy_(p.to(torch.bfloat16).float())
            elif "layers." in name and p.shape[1] % 128 == 0:
                p.copy_(rtn_symmetric(p.float(), 4 if kind == "rtn-w4g128" else 3, 128))
    return m


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/compact_reference_precision.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.eval.divergence import token_kld
    from quantbench.eval.logprob_codec import LOG_RANGE, bytes_per_token, decode_logprobs, encode_logprobs
    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import load_text, split_tokens

    def unrenormalized(ref, q):  # the old sum: float32 log-softmax as given, 0 where the reference holds 0
        p = ref.double().exp()
        return torch.where(p > 0, p * (ref.double() - q.double()), torch.zeros_like(p)).sum(-1)

    torch.manual_seed(0)
    source = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    ids = split_tokens(tok(load_text(None).content, add_special_tokens=False)["input_ids"]).evaluation
    windows = [ids[k * 512 : (k + 1) * 512] for k in range(args.windows)]
    kinds = ("bf16-weights", "rtn-w4g128", "rtn-w3g128")
    candidates = {k: candidate(model, k) for k in kinds}
    ranges = (16.0, 24.0, LOG_RANGE)
    ways = ["fp32 reference"] + [f"16-bit, {r:g} nats" for r in ranges] + [f"16-bit, {LOG_RANGE:g} nats, old sum"]
    exact = {k: [] for k in kinds}
    got = {(k, w): [] for k in kinds for w in ways}
    floor = {r: [] for r in ranges}
    t0 = time.time()
    with torch.inference_mode():
        for w in windows:
            x = torch.tensor([w])
            logits = model(x).logits[0]
            ref64 = torch.log_softmax(logits.double(), -1)
            ref = torch.log_softmax(logits.float(), -1)  # (512, vocab), as the cache is computed
            decoded = {r: decode_logprobs(*encode_logprobs(ref, r), log_range=r) for r in ranges}
            for r in ranges:
                floor[r].append(token_kld(decoded[r], ref64))
            for k, m in candidates.items():
                cand_logits = m(x).logits[0]
                exact[k].append((ref64.exp() * (ref64 - torch.log_softmax(cand_logits.double(), -1))).sum(-1))
                q = torch.log_softmax(cand_logits.float(), -1)
                got[(k, "fp32 reference")].append(token_kld(ref, q))
                for r in ranges:
                    got[(k, f"16-bit, {r:g} nats")].append(token_kld(decoded[r], q))
                got[(k, ways[-1])].append(unrenormalized(decoded[LOG_RANGE], q))
    rows = []
    for k in kinds:
        e = torch.cat(exact[k])
        for way in ways:
            c = torch.cat(got[(k, way)])
            rows.append({
                "candidate": k, "reference": way, "tokens": e.numel(),
                "mean_kld_exact": float(e.mean()), "mean_kld": float(c.mean()),
                "diff": float(c.mean() - e.mean()), "rel_diff": float((c.mean() - e.mean()) / e.mean()),
                "max_token_abs_diff": float((c - e).abs().max()),
            })
    floors = {f"{r:g} nats": {"mean": float(torch.cat(floor[r]).mean()), "max": float(torch.cat(floor[r]).max())} for r in ranges}
    vocab = model.config.vocab_size
    result = {
        "what": "mean KLD exactly (float64 logits) vs as quantbench computes it from fp32 and 16-bit stored references",
        "stored_reference_kld_vs_exact": floors,
        "model": source.name, "text": "default wikipedia excerpt, evaluation split", "windows": args.windows, "window": 512,
        "bytes_per_token_fp32": 4 * vocab, "bytes_per_token_16bit": bytes_per_token(vocab),
        "rows": rows, "seconds": time.time() - t0,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
        "command": "PYTHONPATH=. python3 benchmarks/compact_reference_precision.py",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['candidate']:13s} {row['reference']:28s} exact {row['mean_kld_exact']:.6g}  got {row['mean_kld']:.6g}  "
              f"diff {row['diff']:+.2e} ({100 * row['rel_diff']:+.3f}%)  max per token {row['max_token_abs_diff']:.2e}")
    for r, f in floors.items():
        print(f"stored reference vs exact, {r}: mean KLD {f['mean']:.2e}, max {f['max']:.2e}")


if __name__ == "__main__":
    main()

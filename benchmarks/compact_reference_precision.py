"""What the 16-bit reference storage (quantbench/eval/logprob_codec.py) costs on KLD, measured.

For the default model (or --model), the fp32 reference log-probs of N windows of 512 tokens of the
default text are stored both exactly (fp32) and as 16-bit codes; three candidates of known, very
different quality are scored against both: the model with bf16-rounded weights (KLD ~1e-4), RTN
symmetric 4-bit group-128 weights, and RTN 3-bit group-128. Reported: mean KLD from the exact
reference (float64 arithmetic), from the 16-bit one, their absolute and relative difference, and the
largest per-token difference. Writes JSON to benchmarks/results/.

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

    from quantbench.eval.logprob_codec import LOG_RANGE, bytes_per_token, decode_logprobs, encode_logprobs, kld_from_decoded
    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import load_text, split_tokens

    torch.manual_seed(0)
    source = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    ids = split_tokens(tok(load_text(None).content, add_special_tokens=False)["input_ids"]).evaluation
    windows = [ids[k * 512 : (k + 1) * 512] for k in range(args.windows)]
    kinds = ("bf16-weights", "rtn-w4g128", "rtn-w3g128")
    candidates = {k: candidate(model, k) for k in kinds}
    ranges = (LOG_RANGE, 24.0, 32.0)
    exact = {k: [] for k in kinds}
    compact = {(k, r): [] for k in kinds for r in ranges}
    t0 = time.time()
    with torch.inference_mode():
        for w in windows:
            x = torch.tensor([w])
            ref = torch.log_softmax(model(x).logits[0].float(), -1)  # (512, vocab)
            decoded = {r: decode_logprobs(*encode_logprobs(ref, r), log_range=r) for r in ranges}
            for k, m in candidates.items():
                q = torch.log_softmax(m(x).logits[0].float(), -1)
                exact[k].append((ref.double().exp() * (ref.double() - q.double())).sum(-1))
                for r in ranges:
                    compact[(k, r)].append(kld_from_decoded(decoded[r].double(), q.double()))
    rows = []
    for k in kinds:
        e = torch.cat(exact[k])
        for r in ranges:
            c = torch.cat(compact[(k, r)])
            rows.append({
                "candidate": k, "log_range": r, "tokens": e.numel(),
                "mean_kld_exact": float(e.mean()), "mean_kld_16bit": float(c.mean()),
                "abs_diff": float((c.mean() - e.mean()).abs()), "rel_diff": float((c.mean() - e.mean()).abs() / e.mean()),
                "max_token_abs_diff": float((c - e).abs().max()),
            })
    vocab = model.config.vocab_size
    result = {
        "what": "mean KLD from an exact fp32 reference vs from the 16-bit stored reference (logprob_codec)",
        "model": source.name, "text": "default wikipedia excerpt, evaluation split", "windows": args.windows, "window": 512,
        "bytes_per_token_fp32": 4 * vocab, "bytes_per_token_16bit": bytes_per_token(vocab),
        "rows": rows, "seconds": time.time() - t0,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
        "command": "PYTHONPATH=. python3 benchmarks/compact_reference_precision.py",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['candidate']:13s} range {row['log_range']:4.0f}: exact {row['mean_kld_exact']:.6g}  16-bit "
              f"{row['mean_kld_16bit']:.6g}  |diff| {row['abs_diff']:.2e} ({100 * row['rel_diff']:.3f}%)  "
              f"max per token {row['max_token_abs_diff']:.2e}")


if __name__ == "__main__":
    main()

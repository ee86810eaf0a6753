"""Issue 8's "behaviour unchanged" check: two `quantbench compare` JSONs, method by method.

Quality and byte columns must be equal (the same code path on the same machine is deterministic);
speed and peak memory vary by run and are shown, not checked. Exit status 1 when a checked value differs.

    python3 benchmarks/results/issue8-before-after/diff_compare.py BEFORE.json AFTER.json
"""

from __future__ import annotations

import json
import math
import sys

CHECKED = ("ppl", "nll_mean", "scored_tokens", "delta_ppl", "kld_mean", "kld_median", "kld_p99", "kld_max",
           "top1_agreement", "weight_bytes", "bits_per_weight", "bits_per_weight_quantized", "runtime", "status")
VARYING = ("peak_memory_bytes", "prefill_tok_s", "decode_tok_s", "quantize_seconds")


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def main(before_path: str, after_path: str) -> int:
    before, after = json.loads(open(before_path).read()), json.loads(open(after_path).read())
    differ = 0
    ref = (before["protocol"]["reference_ppl"], after["protocol"]["reference_ppl"])
    print(f"reference PPL: before {ref[0]!r}, after {ref[1]!r}: {'equal' if same(*ref) else 'DIFFERENT'}")
    differ += not same(*ref)
    for key in ("perplexity", "calibration"):
        equal = before["protocol"][key] == after["protocol"][key]
        print(f"protocol {key}: {'equal' if equal else 'DIFFERENT'}")
        differ += not equal
    rows_after = {r["method"]: r for r in after["rows"]}
    if [r["method"] for r in before["rows"]] != [r["method"] for r in after["rows"]]:
        print("methods differ:", [r["method"] for r in before["rows"]], [r["method"] for r in after["rows"]])
        differ += 1
    print(f"\n{'method':12} {'checked columns':>16}  varying (before -> after)")
    for b in before["rows"]:
        a = rows_after.get(b["method"], {})
        bad = [k for k in CHECKED if not same(b.get(k), a.get(k))]
        for k in bad:
            print(f"  {b['method']}: {k} before {b.get(k)!r} after {a.get(k)!r}")
        differ += len(bad)
        varying = ", ".join(f"{k} {b.get(k, 0) or 0:.4g} -> {a.get(k, 0) or 0:.4g}" for k in VARYING)
        print(f"{b['method']:12} {'equal' if not bad else str(len(bad)) + ' DIFFERENT':>16}  {varying}")
    missing = sorted(set().union(*(r.keys() for r in before["rows"])) - set().union(*(r.keys() for r in after["rows"])))
    added = sorted(set().union(*(r.keys() for r in after["rows"])) - set().union(*(r.keys() for r in before["rows"])))
    print(f"\nrow keys only before: {missing or 'none'}; only after: {added or 'none'}")
    rec = (before["recommendation"]["method"], after["recommendation"]["method"])
    print(f"recommendation: before {rec[0]}, after {rec[1]}: {'equal' if rec[0] == rec[1] else 'DIFFERENT'}")
    differ += rec[0] != rec[1]
    print(f"\n{differ} checked value(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

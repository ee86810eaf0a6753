"""Which method to use: the rule is stated in the output, never hidden, and so is its uncertainty.

Each rule picks one method and names the next candidate under the same rule. The pick and that
candidate are then compared PAIRED, on the very same scored tokens (per-token KLD differences) or task
items (per-item correctness differences), with the block bootstrap of eval/uncertainty.py; when the
interval of the difference contains 0 the recommendation says the two are not distinguishable.
"""

from __future__ import annotations

import numpy as np

from quantbench.eval.uncertainty import BootstrapConfig, distinguishable, paired_difference

# Mean KLD at or below which a quantization is "close to the reference". llama.cpp's scoreboard
# (PR 6936, Llama-3-8B) puts q5_K_M at 0.011 and q4_K_M at 0.031; 0.05 keeps q4_K_M-class methods.
NEAR_LOSSLESS_KLD = 0.05
RANK_BY = ("kld", "task")


def _paired(pick: str, other: str, per_token: dict, key: str) -> dict | None:
    a, b = (per_token.get(pick) or {}).get(key), (per_token.get(other) or {}).get(key)
    if a is None or b is None:
        return None
    config = BootstrapConfig(block_tokens=1) if key == "task" else BootstrapConfig()  # task items are independent
    diff = paired_difference([np.asarray(w) for w in a], [np.asarray(w) for w in b], config)
    return {"versus": other, "quantity": f"mean {key} of {pick} minus {other}", "difference": diff.to_dict(),
            "distinguishable": distinguishable(diff)}


def _note(pick: str, comparison: dict | None, label: str, next_candidate: str | None) -> str:
    if next_candidate is None:
        return "no other candidate under this rule"
    if comparison is None:
        return f"next candidate {next_candidate}; no per-token data was kept, so the two were not compared paired"
    d = comparison["difference"]
    span = f"{label} {d['estimate']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"
    if comparison["distinguishable"]:
        return f"distinguishable from the next candidate {comparison['versus']} (paired {span})"
    return f"NOT distinguishable from the next candidate {comparison['versus']} (paired {span} contains 0)"


def recommend(rows: list[dict], memory_budget_bytes: int | None, per_token: dict | None = None, rank_by: str = "kld") -> dict:
    """`per_token`: method -> {"kld": [per window], "task": [[per item]]} from the evaluations."""
    per_token = per_token or {}
    out = {"method": None, "memory_budget_bytes": memory_budget_bytes, "rank_by": rank_by}
    ok = [r for r in rows if r.get("status") == "ok" and r.get("kld_mean") is not None]
    if rank_by == "task":
        ok = [r for r in ok if r.get("task_acc") is not None]
    if not ok:
        return {**out, "rule": "no method finished" + (" with task accuracy (--tasks)" if rank_by == "task" else "")}
    if memory_budget_bytes is not None:
        # the runtime-memory rule (weights + KV cache at the context + llama.cpp's buffers, quantbench.fit.budget)
        ok = [r for r in ok if r.get("runtime_memory") and r["runtime_memory"]["total"] <= memory_budget_bytes]
    budget_words = (" among methods whose runtime memory (weights + KV cache at the context + llama.cpp's compute "
                    "buffers) fits the budget") if memory_budget_bytes is not None else ""
    if rank_by == "task":
        rule = f"highest task accuracy{budget_words} (ties: smaller weights)"
        order = sorted(ok, key=lambda r: (-r["task_acc"], r["weight_bytes"]))
        key, label = "task", "accuracy difference"
    elif memory_budget_bytes is not None:
        rule = f"lowest mean KLD{budget_words}"
        order = sorted(ok, key=lambda r: (r["kld_mean"], r["weight_bytes"]))
        key, label = "kld", "mean KLD difference"
    else:
        rule = f"smallest weights among methods with mean KLD <= {NEAR_LOSSLESS_KLD}"
        order = sorted((r for r in ok if r["kld_mean"] <= NEAR_LOSSLESS_KLD), key=lambda r: (r["weight_bytes"], r["kld_mean"]))
        key, label = "kld", "mean KLD difference"
    if not order:
        return {**out, "rule": rule + (": none fits" if memory_budget_bytes is not None else ": none qualifies")}
    best = order[0]
    comparison = _paired(best["method"], order[1]["method"], per_token, key) if len(order) > 1 else None
    out.update(method=best["method"], rule=rule, next_candidate=order[1]["method"] if len(order) > 1 else None,
               comparison=comparison, note=_note(best["method"], comparison, label, order[1]["method"] if len(order) > 1 else None))
    interval = best.get("kld_mean_interval")
    if rank_by == "kld" and memory_budget_bytes is None and interval and interval["high"] > NEAR_LOSSLESS_KLD:
        out["note"] += (f"; its mean KLD interval [{interval['low']:.4g}, {interval['high']:.4g}] reaches above "
                        f"{NEAR_LOSSLESS_KLD}: within the threshold only at the point estimate")
    return out

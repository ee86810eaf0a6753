"""Which method to use: the rule is stated in the output, never hidden."""

from __future__ import annotations

# Mean KLD at or below which a quantization is "close to the reference". llama.cpp's scoreboard
# (PR 6936, Llama-3-8B) puts q5_K_M at 0.011 and q4_K_M at 0.031; 0.05 keeps q4_K_M-class methods.
NEAR_LOSSLESS_KLD = 0.05


def recommend(rows: list[dict], memory_budget_bytes: int | None) -> dict:
    ok = [r for r in rows if r.get("status") == "ok" and r.get("kld_mean") is not None]
    if not ok:
        return {"method": None, "rule": "no method finished", "memory_budget_bytes": memory_budget_bytes}
    if memory_budget_bytes is not None:
        # the runtime-memory rule (weights + KV cache at the context + llama.cpp's buffers, quantbench.fit.budget)
        fitting = [r for r in ok if r.get("runtime_memory") and r["runtime_memory"]["total"] <= memory_budget_bytes]
        rule = ("lowest mean KLD among methods whose runtime memory (weights + KV cache at the context + llama.cpp's "
                "compute buffers) fits the budget")
        if not fitting:
            return {"method": None, "rule": rule + ": none fits", "memory_budget_bytes": memory_budget_bytes}
        best = min(fitting, key=lambda r: (r["kld_mean"], r["weight_bytes"]))
        return {"method": best["method"], "rule": rule, "memory_budget_bytes": memory_budget_bytes}
    close = [r for r in ok if r["kld_mean"] <= NEAR_LOSSLESS_KLD]
    rule = f"smallest weights among methods with mean KLD <= {NEAR_LOSSLESS_KLD}"
    if not close:
        return {"method": None, "rule": rule + ": none qualifies", "memory_budget_bytes": None}
    best = min(close, key=lambda r: (r["weight_bytes"], r["kld_mean"]))
    return {"method": best["method"], "rule": rule, "memory_budget_bytes": None}

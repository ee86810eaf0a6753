"""The readable form of `quantbench plan`'s result (quantbench.plan.plan)."""

from __future__ import annotations


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:.1f} MB"


def format_table(result: dict) -> str:
    """The readable form of a plan: one line per method, then the methods with no plan, loudly."""
    m = result["model"]
    lines = [
        f"model: {m['name']} ({m['source']}) {m['model_type']}, {m['params'] / 1e9:.3f} B params, "
        f"{m['layers']} layers, hidden {m['hidden_size']}, vocab {m['vocab_size']}"
        + (", tied embeddings" if m["tied_embeddings"] else ""),
        f"context {result['context']} x batch {result['batch']} on {result['device']}; "
        f"memory {format_bytes(result['device_memory_bytes'])} ({result['device_memory_source']})",
        "",
        f"{'method':22} {'weights':>10} {'bpw':>6} {'bpw(q)':>6} {'KV cache':>10} {'activ.':>9} {'total':>10} {'fits':>5}"
        f"  {'quantize peak':>13} {'where':>5} {'host peak':>10} {'disk':>9}  strategy",
    ]
    for r in result["methods"]:
        if not r.get("planned"):
            lines.append(f"{r['method']:22} {r['no_plan_reason'].upper() if r['method'] in result['no_plan'] else r['no_plan_reason']}")
            continue
        bpw_q = f"{r['bits_per_weight_quantized']:.3f}" if r["bits_per_weight_quantized"] else "-"
        where = "host" if r["quantize_runs_on"] == "host" else "dev"
        lines.append(
            f"{r['method']:22} {format_bytes(r['weight_bytes']):>10} {r['bits_per_weight']:6.3f} {bpw_q:>6} "
            f"{format_bytes(r['kv_cache_bytes']):>10} {format_bytes(r['activation_bytes']):>9} "
            f"{format_bytes(r['total_bytes']):>10} {'yes' if r['fits'] else 'NO':>5}  "
            f"{format_bytes(r['quantize_peak_bytes']):>13} {where:>5} {format_bytes(r['quantize_host_peak_bytes']):>10} "
            f"{format_bytes(r.get('quantize_disk_bytes')):>9}  "
            f"{r['quantize_strategy']}"
            + ("" if r["available"] in (True, None) else f"  (not runnable here: {r['unavailable_reason']})")
        )
    explained = {}  # the peak formula of each streaming strategy, every term, once
    for r in result["methods"]:
        lines_for = r.get("planned") and r["quantize"].get("budget_lines")
        if lines_for and r["quantize_strategy"] + lines_for[0].split(" on ")[0] not in explained:
            explained[r["quantize_strategy"] + lines_for[0].split(" on ")[0]] = (r["method"], lines_for, r["quantize"]["disk_parts"])
    if explained:
        lines += ["", "memory while quantizing from disk (anonymous memory; the checkpoint is read with pread, never mapped):"]
        for method, budget_lines, disk in explained.values():
            lines += [f"  e.g. {method}: " + budget_lines[0], *[f"  {line}" for line in budget_lines[1:]]]
            lines += ["    disk: " + " + ".join(f"{name} {format_bytes(b)}" for name, b in disk.items())]
    if result["no_plan"]:
        lines += ["", f"WARNING: {len(result['no_plan'])} method(s) have no size plan yet: {', '.join(result['no_plan'])}"]
    lines += ["", *[f"note: {n}" for n in result["notes"]]]
    return "\n".join(lines)

"""The synthetic bench's tables (quantbench.bench.run_bench's result): Markdown for RESULTS.md, text for the terminal."""

from __future__ import annotations

from quantbench.report.plan_table import format_bytes


def _size(n) -> str:
    return format_bytes(n)


def to_markdown(result: dict) -> str:
    s = result["settings"]
    v = result["versions"]
    lines = [
        f"### {result['model']['name']} ({result['model']['params'] / 1e9:.2f} B params, random weights) on {result['device']}",
        "",
        f"{result['date']}; torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, "
        f"bitsandbytes {v.get('bitsandbytes')}; {s['runtime']}; prompt {s['prompt_tokens']} tokens, "
        f"{s['new_tokens']} new tokens, batch {s['batch']}, median of {s['repeats']} after {s['warmup']} warm-up.",
        f"Bandwidth (device-to-device copy, read + write): {result['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s.",
        "",
        "| method | stored | plan | transformers footprint | peak (run) | prefill tok/s | decode tok/s "
        "| ceiling tok/s | of ceiling | PPL / KLD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"]:
        lines.append(
            f"| {r['method']} | {_size(r['stored_bytes'])} | {_size(r['planned_weight_bytes'])} | {_size(r['reported_footprint_bytes'])} "
            f"| {_size(r['inference_peak_bytes'])} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:.1f} "
            f"({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f}) | {r['ceiling_decode_tok_s']:,.0f} "
            f"| {100 * r['fraction_of_ceiling']:.1f}% | n/a |"
        )
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines)


def to_text(result: dict) -> str:
    lines = [
        f"{result['model']['name']} with random weights on {result['device']}; bandwidth "
        f"{result['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s (copy, read + write)",
        f"{'method':18} {'stored':>10} {'plan':>10} {'footprint':>10} {'peak':>10} {'prefill t/s':>11} "
        f"{'decode t/s':>10} {'ceiling t/s':>11} {'of ceil.':>8}  quality",
    ]
    for r in result["methods"]:
        lines.append(
            f"{r['method']:18} {_size(r['stored_bytes']):>10} {_size(r['planned_weight_bytes']):>10} {_size(r['reported_footprint_bytes']):>10} "
            f"{_size(r['inference_peak_bytes']):>10} {r['prefill_tok_s']:11.1f} {r['decode_tok_s']:10.2f} "
            f"{r['ceiling_decode_tok_s']:11.1f} {100 * r['fraction_of_ceiling']:7.2f}%  n/a"
        )
    lines += [f"quality: {quality}" for quality in sorted({r["quality"] for r in result["methods"]})]
    return "\n".join(lines)

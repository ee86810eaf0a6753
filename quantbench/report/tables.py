"""The comparison table as text, Markdown, JSON and CSV; a plot of quality loss against size."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from quantbench.artifact import atomic_file, write_json_atomic, write_text_atomic

# (header, row key, formatter)
COLUMNS = (
    ("method", "method", str),
    ("runtime", "runtime", str),
    ("bits/w", "bits_per_weight", lambda v: f"{v:.2f}"),
    ("q bits/w", "bits_per_weight_quantized", lambda v: f"{v:.2f}"),
    ("size MB", "weight_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("footprint MB*", "reported_footprint_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("peak MB", "peak_memory_bytes", lambda v: f"{v / 1e6:.0f}"),
    ("PPL", "ppl", lambda v: f"{v:.3f}"),
    ("dPPL", "delta_ppl", lambda v: f"{v:+.3f}"),
    ("KLD mean", "kld_mean", lambda v: f"{v:.5f}"),
    ("KLD p99", "kld_p99", lambda v: f"{v:.4f}"),
    ("top-1 %", "top1_agreement", lambda v: f"{100 * v:.2f}"),
    ("prefill tok/s", "prefill_tok_s", lambda v: f"{v:.0f}"),
    ("decode tok/s", "decode_tok_s", lambda v: f"{v:.1f}"),
)


def _cells(row: dict) -> list[str]:
    out = []
    for _, key, fmt in COLUMNS:
        value = row.get(key)
        out.append("n/a" if value is None else fmt(value))
    return out


def _peak_kind(result: dict) -> str:
    kinds = sorted({r["peak_memory_kind"] for r in result["rows"] if r.get("peak_memory_kind")})
    return ", ".join(kinds) or "n/a"


def _notes(result: dict) -> list[str]:
    p = result["protocol"]
    ppl = p["perplexity"]
    devices = sorted({r.get("device", "?") for r in result["rows"]})
    notes = [
        f"model {result['model']['name']} ({result['model']['params'] / 1e6:.1f} M params), text {result['text']['name']}, device {', '.join(devices)}",
        f"PPL protocol: {ppl['name']}, window {ppl['window']}, stride {ppl['stride']}, {ppl['max_windows']} windows, "
        f"scored from position {ppl['score_from']}, BOS {'added' if ppl['bos_token_id'] is not None else 'not added'}"
        + (f" ({p['bos']}; --add-bos/--no-add-bos override)" if p.get("bos") else "")
        + f"; reference PPL {p['reference_ppl']:.3f}",
        f"KLD: {p['kld']}; " + (f"speed: batch {p['speed']['batch']}, prompt {p['speed']['prompt_tokens']}, "
        f"{p['speed']['new_tokens']} new tokens, median of {p['speed']['repeats']} after {p['speed']['warmup']} warm-up"
        if p["speed"].get("measured", True) else "speed not measured (--no-speed)"),
        "bits/w = all stored bits / all parameters; q bits/w = over the tensors the method quantizes, state included",
        "* footprint = what the runtime itself reports (transformers' get_memory_footprint(), llama.cpp's model size); "
        "size = true stored bytes incl. quant state; peak = " + _peak_kind(result),
    ]
    if p.get("runtime_memory"):
        rm = p["runtime_memory"]
        notes.append(f"runtime memory at context {rm['context']}: {rm['rule']}; "
                     + ", ".join(f"{r['method']} {r['runtime_memory']['total'] / 1e6:.1f} MB"
                                 for r in result["rows"] if r.get("runtime_memory")))
    for r in result["rows"]:
        if r.get("status") != "ok":
            notes.append(f"{r['method']}: {r['status'].splitlines()[0]}")
        elif r.get("kv_cache_type") and r["method"] == "fit":
            notes.append(f"fit: KV cache {r['kv_cache_type']} (llama.cpp: -ctk {r['kv_cache_type'].lower()} "
                         f"-ctv {r['kv_cache_type'].lower()} -fa on), predicted mean KLD {r['predicted_kld']:.5f}")
    rec = result.get("recommendation") or {}
    if rec:
        notes.append(f"recommendation: {rec.get('method') or 'none'} ({rec.get('rule')})")
    return notes


def text_table(result: dict) -> str:
    headers = [c[0] for c in COLUMNS]
    body = [_cells(r) for r in result["rows"] if r.get("status") == "ok"]
    widths = [max(len(x) for x in col) for col in zip(headers, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [line(headers), line(["-" * w for w in widths])] + [line(b) for b in body]
    return "\n".join(lines + [""] + _notes(result))


def row_lines(row: dict) -> str:
    """One measured row (`quantbench eval`), a line per column, then the protocol it was measured under."""
    lines = [f"{header:16} {cell}" for (header, key, _), cell in zip(COLUMNS, _cells(row)) if key in row]
    if "reference_ppl" in row:
        lines.append(f"{'reference PPL':16} {row['reference_ppl']:.3f}")
    if "protocol" in row:
        lines.append(f"{'protocol':16} {json.dumps(row['protocol'])}")
    if row.get("bos"):
        lines.append(f"{'BOS rule':16} {row['bos']}")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    headers = [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"] if r.get("status") == "ok"]
    return "\n".join(lines + [""] + [f"- {n}" for n in _notes(result)]) + "\n"


def csv_text(result: dict) -> str:
    keys = sorted({k for r in result["rows"] for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in result["rows"]:
        writer.writerow(r)
    return buf.getvalue()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    # One colour per runtime present, in a fixed order, so no runtime needs an entry here.
    colours = {name: f"C{i}" for i, name in enumerate(sorted({r["runtime"] for r in rows}))}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        kld = max(r["kld_mean"], 1e-7)
        ax.scatter(r["weight_bytes"] / 1e6, kld, color=colours[r["runtime"]])
        ax.annotate(r["method"], (r["weight_bytes"] / 1e6, kld), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name, colour in colours.items():
        ax.scatter([], [], color=colour, label=name)
    ax.legend(title="runtime", fontsize=7, title_fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("stored weight bytes (MB, incl. quantization state)")
    ax.set_ylabel("mean KL divergence vs reference (log scale)")
    ax.set_title(f"{result['model']['name']}: quality loss vs size", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_all(result: dict, out_dir: Path, json_path: Path | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in ([json_path] if json_path else []) + [out_dir / "compare.json"]:
        write_json_atomic(path, result)
        written.append(path)
    for name, content in (("compare.md", markdown_table(result)), ("compare.csv", csv_text(result))):
        write_text_atomic(out_dir / name, content)
        written.append(out_dir / name)
    if any(r.get("status") == "ok" for r in result["rows"]):
        plot(result, out_dir / "compare.png")
        written.append(out_dir / "compare.png")
    return written

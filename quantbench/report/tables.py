"""The comparison table as text, Markdown, JSON and CSV; a plot of quality loss against size."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from quantbench.artifact import write_json_atomic, write_text_atomic

# (header, row key, formatter)
COLUMNS = (
    ("method", "method", str),
    ("runtime", "runtime", str),
    ("bits/w", "bits_per_weight", lambda v: f"{v:.2f}"),
    ("q bits/w", "bits_per_weight_quantized", lambda v: f"{v:.2f}"),
    ("size MB", "weight_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("footprint MB*", "reported_footprint_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("peak MB", "peak_memory_bytes", lambda v: f"{v / 1e6:.0f}"),
    ("PPL ±95%", "ppl", lambda v: f"{v:.3f}"),
    ("dPPL", "delta_ppl", lambda v: f"{v:+.3f}"),
    ("KLD mean ±95%", "kld_mean", lambda v: f"{v:.5f}"),
    ("KLD p99", "kld_p99", lambda v: f"{v:.4f}"),
    ("top-1 % ±95%", "top1_agreement", lambda v: f"{100 * v:.2f}"),
    ("task acc % ±95%", "task_acc", lambda v: f"{100 * v:.1f}"),
    ("prefill tok/s", "prefill_tok_s", lambda v: f"{v:.0f}"),
    ("decode tok/s", "decode_tok_s", lambda v: f"{v:.1f}"),
)


def _half_width(value: float, interval: dict) -> float:
    """The larger side of a (possibly asymmetric) interval, for a compact 'value ±h' cell."""
    return max(interval["high"] - value, value - interval["low"])


def _cells(row: dict, columns=None) -> list[str]:
    out = []
    for _, key, fmt in columns or COLUMNS:
        value = row.get(key)
        cell = "n/a" if value is None else fmt(value)
        interval = row.get(f"{key}_interval")
        if value is not None and interval:  # the column's own formatter keeps the units (x100 for percentages)
            cell += " ±" + fmt(_half_width(value, interval)).lstrip("+")
        out.append(cell)
    return out


def _columns(result: dict):
    """Every column, less task accuracy when no --tasks were given."""
    has_tasks = any(r.get("task_acc") is not None for r in result["rows"])
    return tuple(c for c in COLUMNS if has_tasks or c[1] != "task_acc")


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
        + f"; reference PPL {p['reference_ppl']:.3f}"
        + (f" ±{_half_width(p['reference_ppl'], p['reference_ppl_interval']):.3f}" if p.get("reference_ppl_interval") else ""),
        f"KLD: {p['kld']}; " + (f"speed: batch {p['speed']['batch']}, prompt {p['speed']['prompt_tokens']}, "
        f"{p['speed']['new_tokens']} new tokens, median of {p['speed']['repeats']} after {p['speed']['warmup']} warm-up"
        if p["speed"].get("measured", True) else "speed not measured (--no-speed)"),
        "bits/w = all stored bits / all parameters; q bits/w = over the tensors the method quantizes, state included",
        "* footprint = what the runtime itself reports (transformers' get_memory_footprint(), llama.cpp's model size); "
        "size = true stored bytes incl. quant state; peak = " + _peak_kind(result),
    ]
    if p.get("uncertainty"):
        notes.append(f"±95% = {p['uncertainty']['method']}; llama.cpp's per-token +/- is in the JSON beside each "
                     "interval (per_token_se, narrower: neighbouring tokens are correlated)")
    if p.get("runtime_memory"):
        rm = p["runtime_memory"]
        notes.append(f"runtime memory at context {rm['context']}: {rm['rule']}; "
                     + ", ".join(f"{r['method']} {r['runtime_memory']['total'] / 1e6:.1f} MB"
                                 for r in result["rows"] if r.get("runtime_memory")))
    tasks = p.get("reference_tasks")
    if tasks:
        iv = tasks["task_acc_interval"]
        notes.append(f"task: the full-precision model itself scores {100 * tasks['task_acc']:.1f}% "
                     f"[{100 * iv['low']:.1f}, {100 * iv['high']:.1f}] on the same {tasks['task_items']} items ({iv['method']})"
                     + ("; with this few items the interval spans tens of points: a smaller task difference is not a "
                        "finding" if tasks["task_items"] < 100 else ""))
    for r in result["rows"]:
        if r.get("status") != "ok":
            notes.append(f"{r['method']}: {r['status'].splitlines()[0]}")
        elif r.get("kv_cache_type") and r["method"] == "fit":
            notes.append(f"fit: KV cache {r['kv_cache_type']} (llama.cpp: -ctk {r['kv_cache_type'].lower()} "
                         f"-ctv {r['kv_cache_type'].lower()} -fa on), predicted mean KLD {r['predicted_kld']:.5f}")
    rec = result.get("recommendation") or {}
    if rec:
        notes.append(f"recommendation: {rec.get('method') or 'none'} (rule: {rec.get('rule')})"
                     + (f"; {rec['note']}" if rec.get("note") else ""))
    return notes


def text_table(result: dict) -> str:
    columns = _columns(result)
    headers = [c[0] for c in columns]
    body = [_cells(r, columns) for r in result["rows"] if r.get("status") == "ok"]
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
    columns = _columns(result)
    headers = [c[0] for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cells(r, columns)) + " |" for r in result["rows"] if r.get("status") == "ok"]
    return "\n".join(lines + [""] + [f"- {n}" for n in _notes(result)]) + "\n"


def csv_text(result: dict) -> str:
    keys = sorted({k for r in result["rows"] for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in result["rows"]:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    return buf.getvalue()


def plot(result: dict, path: Path) -> None:
    from quantbench.report.plot import plot_quality_vs_size

    plot_quality_vs_size(result, path)


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

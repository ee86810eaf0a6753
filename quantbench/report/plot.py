"""The plot a user reads: quality loss (mean KLD, log scale, with its interval) against stored size.

- Every point carries an error bar: the interval of its mean KLD (the JSON's `kld_mean_interval`).
- A method that reproduces the reference (mean KLD below `AT_REFERENCE_KLD`, i.e. float rounding of the
  reference's own computation) would sit orders of magnitude below the rest on a log axis and squash
  them; it is drawn ON the bottom edge with a downward marker and labelled "= reference".
- Labels never overlap: each is placed at the first of a list of offsets around its point whose box
  is free and inside the figure (measured with the figure's renderer), with a thin leader line when it is moved away.
"""

from __future__ import annotations

from pathlib import Path

from quantbench.artifact import atomic_file

AT_REFERENCE_KLD = 1e-6  # below this a mean KLD is numerical noise of recomputing the reference itself
_OFFSETS = [(4, 4), (4, -10), (-4, 4), (-4, -10)] + [(dx, dy) for dy in (14, -20, 24, -30, 34, -40, 44, -50)
                                                         for dx in (4, -4, 40, -40)]


def _interval(row: dict) -> tuple[float, float] | None:
    iv = row.get("kld_mean_interval")
    return (iv["low"], iv["high"]) if iv else None


def place_labels(fig, ax, points: list[tuple[float, float, str]]) -> list:
    """Annotate each (x, y, text) at a free spot; returns the annotation artists."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    # tick labels, axis labels and title are obstacles, and so are the markers themselves
    taken = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    taken += [t.get_window_extent(renderer) for t in (ax.xaxis.label, ax.yaxis.label, ax.title)]
    markers = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        markers.append(Bbox([[px - 4, py - 4], [px + 4, py + 4]]))
    artists = []
    for k, (x, y, text) in enumerate(points):
        obstacles = taken + markers[:k] + markers[k + 1 :]  # a label may touch its own marker
        chosen = None
        for dx, dy in _OFFSETS:
            moved = (dx, dy) not in _OFFSETS[:4]
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              ha="left" if dx >= 0 else "right",
                              arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5") if moved else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer).expanded(1.05, 1.15)  # the text, not its leader line
            inside = fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(t) for t in obstacles):
                chosen = ann
                taken.append(box)
                break
            ann.remove()
        if chosen is None:  # crowded beyond every offset: last resort, far out with a leader line
            chosen = ax.annotate(text, (x, y), xytext=(60, 60 + 12 * len(artists)), textcoords="offset points",
                                 fontsize=7, arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
            chosen.update_positions(renderer)
            taken.append(Text.get_window_extent(chosen, renderer))
        artists.append(chosen)
    return artists


def plot_quality_vs_size(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("kld_mean") is not None]
    measured = [r for r in rows if r["kld_mean"] >= AT_REFERENCE_KLD]
    at_reference = [r for r in rows if r["kld_mean"] < AT_REFERENCE_KLD]
    # One colour per runtime present, in a fixed order, so no runtime needs an entry here.
    colours = {name: f"C{i}" for i, name in enumerate(sorted({r.get("runtime", "?") for r in rows}))}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.set_yscale("log")
    lows = [(_interval(r) or (r["kld_mean"],) * 2)[0] for r in measured] or [1e-3]
    highs = [(_interval(r) or (r["kld_mean"],) * 2)[1] for r in measured] or [1e-1]
    bottom = max(min(v for v in lows if v > 0) if any(v > 0 for v in lows) else AT_REFERENCE_KLD, AT_REFERENCE_KLD) / 3
    top = max(highs) * 3
    ax.set_ylim(bottom, top)
    labels = []
    for r in measured:
        x, y = r["weight_bytes"] / 1e6, r["kld_mean"]
        color = colours[r.get("runtime", "?")]
        iv = _interval(r)
        yerr = [[y - max(iv[0], bottom)], [iv[1] - y]] if iv else None
        ax.errorbar(x, y, yerr=yerr, fmt="o", color=color, ms=4, capsize=2, lw=0.8)
        labels.append((x, y, r["method"]))
    for r in at_reference:
        x = r["weight_bytes"] / 1e6
        ax.plot(x, bottom, marker="v", color="0.3", ms=7, clip_on=False, zorder=5)
        labels.append((x, bottom, f"{r['method']} (= reference, KLD {r['kld_mean']:.0e})"))
    for name, colour in colours.items():
        ax.plot([], [], "o", color=colour, ms=4, label=name)  # legend handles only (no error-bar container)
    ax.legend(title="runtime", fontsize=7, title_fontsize=7, loc="upper right")
    ax.set_xlabel("stored weight bytes (MB, incl. quantization state)")
    ax.set_ylabel("mean KL divergence vs reference (log scale)")
    ax.set_title(f"{result['model']['name']}: quality loss vs size; bars: 95% interval of the mean KLD\n"
                 f"(\u25bc on the axis: reproduces the reference, "
                 f"KLD < {AT_REFERENCE_KLD:g})", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.12)
    fig.tight_layout()
    fig.canvas.draw()  # final layout first: label boxes are measured in its pixels
    place_labels(fig, ax, labels)
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, dpi=130)
    plt.close(fig)

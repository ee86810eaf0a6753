"""The plot: the reference off the log axis, an error bar on every measured point, no overlapping labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


def row(method, mb, kld, spread=0.15, runtime="transformers"):
    return {"method": method, "status": "ok", "runtime": runtime, "weight_bytes": mb * 1e6, "kld_mean": kld,
            "kld_mean_interval": {"estimate": kld, "low": kld * (1 - spread), "high": kld * (1 + spread)}}


def test_plot_reference_off_axis_error_bars_and_free_labels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from quantbench.report import plot as plot_module

    result = {"model": {"name": "m"}, "rows": [
        row("fp32", 538, 1e-7), row("bf16", 269, 2e-4),
        row("bnb-nf4", 98.1, 0.21), row("bnb-nf4-dq", 97.4, 0.215), row("rtn-w4g128", 98.0, 0.205),
        row("gguf-q4_k_m", 104, 0.08, runtime="llama.cpp"), row("gguf-q8_0", 145, 0.002, runtime="llama.cpp"),
    ]}
    captured = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    plot_module.plot_quality_vs_size(result, tmp_path / "p.png")
    fig = captured["fig"]
    ax = fig.axes[0]
    assert (tmp_path / "p.png").stat().st_size > 10_000
    low, high = ax.get_ylim()
    assert low > 1e-6 and high > 0.215  # the reference's 1e-7 does not stretch the axis
    assert len(ax.containers) == 6  # an error bar per measured method, none for the reference marker
    fig.canvas.draw()  # at the figure's own dpi (savefig drew at another)
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(boxes) == 7 and any("= reference" in t.get_text() for t in ax.texts)
    assert all(fig.bbox.contains(b.x0, b.y0) and fig.bbox.contains(b.x1, b.y1) for b in boxes)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    real_close(fig)

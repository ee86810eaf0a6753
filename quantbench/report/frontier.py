"""The fit frontier: predicted mean KLD against bytes, the uniform types beside it, labels that do not overlap
(placed by report/plot.py's place_labels, as on the compare plot)."""

from __future__ import annotations

from pathlib import Path


def plot_frontier(frontier: dict, path: Path, chosen: dict | None = None, title: str = "") -> None:
    """frontier["points"]: the fitted frontier (a line); frontier["uniform"]: labelled points, with error
    bars where "measured_kld" and "ci95" (low, high) are given, else hollow markers at their predicted KLD;
    frontier["fitted"] (optional): measured fitted artifacts with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantbench.report.plot import place_labels

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = frontier["points"]
    ax.plot([p["total_bytes"] / 1e6 for p in pts], [max(p["predicted_kld"], 1e-7) for p in pts], "-", color="tab:blue",
            lw=1.5, label="fit frontier (predicted)")
    labels = []
    for u in frontier.get("uniform", []):
        x = u["total_bytes"] / 1e6
        if u.get("measured_kld") is not None:
            low, high = u["ci95"]
            y = u["measured_kld"]
            ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="o", color="tab:orange", capsize=3, ms=4)
        else:
            y = max(u["predicted_kld"], 1e-7)
            ax.plot([x], [y], "o", mfc="none", color="tab:orange", ms=5)
        labels.append((x, y, u["name"]))
    for f in frontier.get("fitted", []):
        low, high = f["ci95"]
        y = f["measured_kld"]
        ax.errorbar([f["total_bytes"] / 1e6], [y], yerr=[[y - low], [high - y]], fmt="s", color="tab:green", capsize=3, ms=4)
        labels.append((f["total_bytes"] / 1e6, y, f["name"]))
    if chosen:
        ax.plot([chosen["total_bytes"] / 1e6], [max(chosen["predicted_kld"], 1e-7)], "*", color="tab:red", ms=11,
                label="this artifact (predicted)")
    ax.set_yscale("log")
    ax.set_xlabel(f"memory in llama.cpp at context {frontier.get('context')} (MB: weights + KV cache + buffers)")
    ax.set_ylabel("mean KL divergence vs full precision")
    handles = [plt.Line2D([], [], color="tab:blue", label="fit frontier (predicted)"),
               plt.Line2D([], [], marker="o", ls="", color="tab:orange", label="uniform types (filled: measured, 95% CI)")]
    if frontier.get("fitted"):
        handles.append(plt.Line2D([], [], marker="s", ls="", color="tab:green", label="fit artifacts (measured, 95% CI)"))
    if chosen:
        handles.append(plt.Line2D([], [], marker="*", ls="", color="tab:red", ms=10, label="this artifact (predicted)"))
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    place_labels(fig, ax, labels)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)

"""The recommendation names its rule, its next candidate, and whether the two are distinguishable under
a paired bootstrap on the same tokens (or task items)."""

from __future__ import annotations

import numpy as np
import pytest

from quantbench.report.recommend import recommend


def per_token_kld(mean: float, seed: int, shared: np.ndarray) -> dict:
    rng = np.random.default_rng(seed)
    return {"kld": [list(shared[w] * mean + rng.normal(0, 0.002, 511)) for w in range(4)]}


def rows_with(klds: dict[str, float], sizes: dict[str, int]) -> list[dict]:
    return [{"method": m, "status": "ok", "kld_mean": k, "weight_bytes": sizes[m], "runtime_memory": {"total": sizes[m] * 2},
             "kld_mean_interval": {"low": k * 0.9, "high": k * 1.1}} for m, k in klds.items()]


def test_pick_not_distinguishable_from_a_near_twin_but_from_a_different_one():
    shared = np.abs(np.random.default_rng(0).standard_normal((4, 511))) + 0.5  # per-token difficulty, shared
    twin = {"small": per_token_kld(0.030, 1, shared), "twin": per_token_kld(0.030, 2, shared)}
    rec = recommend(rows_with({"small": 0.030, "twin": 0.030}, {"small": 40, "twin": 50}), None, twin)
    assert rec["method"] == "small" and rec["next_candidate"] == "twin"
    assert "smallest weights among methods with mean KLD <= 0.05" in rec["rule"]
    assert rec["comparison"]["distinguishable"] is False and "NOT distinguishable from the next candidate twin" in rec["note"]

    apart = {"best": per_token_kld(0.010, 1, shared), "worse": per_token_kld(0.030, 2, shared)}
    rec = recommend(rows_with({"best": 0.010, "worse": 0.030}, {"best": 50, "worse": 40}), 1000, apart)
    assert rec["rule"].startswith("lowest mean KLD") and rec["method"] == "best"
    d = rec["comparison"]["difference"]
    observed = np.mean(apart["best"]["kld"]) - np.mean(apart["worse"]["kld"])  # the paired mean difference itself
    assert rec["comparison"]["distinguishable"] is True and d["high"] < 0
    assert d["estimate"] == pytest.approx(observed) and d["low"] <= observed <= d["high"]


def test_rank_by_task_pairs_items():
    rows = rows_with({"a": 0.2, "b": 0.01}, {"a": 30, "b": 60})
    rows[0].update(task_acc=0.75)
    rows[1].update(task_acc=0.625)
    per_item = {"a": {"task": [[1, 1, 1, 1, 1, 1, 0, 0]]}, "b": {"task": [[1, 1, 1, 1, 1, 0, 0, 0]]}}
    rec = recommend(rows, None, per_item, rank_by="task")
    assert rec["method"] == "a" and rec["rule"].startswith("highest task accuracy")
    assert rec["comparison"]["distinguishable"] is False  # 1 item of 8 apart
    assert recommend(rows_with({"a": 0.2}, {"a": 1}), None, {}, rank_by="task")["method"] is None

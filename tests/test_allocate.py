"""The byte-budget allocator (methods/allocate.py) against brute force on small instances."""

from __future__ import annotations

import itertools
import random

import pytest

from quantbench.errors import QuantbenchError
from quantbench.methods.allocate import Frontier, Group, Option


def brute_force(groups, budget):
    """Every combination: the least total cost with total bytes <= budget, or None."""
    best = None
    for combo in itertools.product(*(g.options for g in groups)):
        total = sum(o.bytes for o in combo)
        if total <= budget:
            cost = sum(o.cost for o in combo)
            if best is None or cost < best[0]:
                best = (cost, total)
    return best


def random_groups(rng, n_groups, n_options, max_bytes=60):
    groups = []
    for g in range(n_groups):
        options = tuple(Option(f"t{j}", rng.randint(1, max_bytes), rng.random()) for j in range(n_options))
        groups.append(Group(f"g{g}", options))
    return groups


@pytest.mark.parametrize("seed", range(12))
def test_exact_at_unit_granularity_matches_brute_force(seed):
    rng = random.Random(seed)
    groups = random_groups(rng, rng.randint(2, 5), rng.randint(1, 4))
    top = sum(max(o.bytes for o in g.options) for g in groups)
    # tolerance tiny enough that a cell is one byte: the DP is then exact
    frontier = Frontier(groups, top, tolerance=0.5 / top)
    assert frontier.unit == 1
    for budget in range(frontier.min_bytes, top + 1):
        expected = brute_force(groups, budget)
        got = frontier.solve(budget)
        assert got.bytes <= budget
        assert got.cost == pytest.approx(expected[0], abs=1e-12), budget
        # the reported totals are the chosen options' exact sums
        options = {g.name: {o.label: o for o in g.options} for g in groups}
        assert got.bytes == sum(options[g][label].bytes for g, label in got.choice.items())
        assert got.cost == pytest.approx(sum(options[g][label].cost for g, label in got.choice.items()))


@pytest.mark.parametrize("seed", range(8))
def test_coarse_granularity_stays_within_tolerance(seed):
    """Never over budget, and never worse than the exact optimum at budget * (1 - tolerance)."""
    rng = random.Random(100 + seed)
    groups = random_groups(rng, 5, 4, max_bytes=5000)
    top = sum(max(o.bytes for o in g.options) for g in groups)
    tolerance = 0.05
    for budget in sorted(rng.sample(range(sum(min(o.bytes for o in g.options) for g in groups), top + 1), 15)):
        frontier = Frontier(groups, budget, tolerance=tolerance)
        assert frontier.unit > 1
        shrunk = brute_force(groups, int(budget * (1 - tolerance)))
        try:
            got = frontier.solve(budget)
        except QuantbenchError:
            assert shrunk is None  # only when even the shrunk budget has no solution
            continue
        assert got.bytes <= budget
        if shrunk is not None:
            assert got.cost <= shrunk[0] + 1e-12
        assert got.cost >= brute_force(groups, budget)[0] - 1e-12  # the DP cannot beat the true optimum


def test_frontier_points_are_monotone_and_each_optimal():
    rng = random.Random(7)
    groups = random_groups(rng, 4, 3, max_bytes=40)
    top = sum(max(o.bytes for o in g.options) for g in groups)
    frontier = Frontier(groups, top, tolerance=0.5 / top)
    points = frontier.points()
    assert len(points) >= 2
    for a, b in zip(points, points[1:]):
        assert a.bytes < b.bytes and a.cost > b.cost
    for p in points:
        assert p.cost == pytest.approx(brute_force(groups, p.bytes)[0])
    assert points[-1].cost == pytest.approx(sum(min(o.cost for o in g.options) for g in groups))


def test_budget_below_smallest_is_one_clear_error():
    groups = [Group("a", (Option("x", 10, 1.0), Option("y", 20, 0.0)))]
    with pytest.raises(QuantbenchError, match="smallest allocation"):
        Frontier(groups, 9)


def test_realistic_size_runs_fast():
    """212 tensors x 8 types at a 100 MB budget: the shape of the default model's problem."""
    import time

    rng = random.Random(3)
    groups = [Group(f"t{g}", tuple(Option(str(j), int(s * (4 + j)), 1.0 / (j + 1) * rng.random())
                                   for j in range(8))) for g, s in enumerate(rng.randint(50_000, 2_000_000) for _ in range(212))]
    budget = sum(sum(o.bytes for o in g.options) // 8 for g in groups)
    t0 = time.perf_counter()
    frontier = Frontier(groups, budget)
    got = frontier.solve(budget)
    assert time.perf_counter() - t0 < 30
    assert got.bytes <= budget
    smallest = sum(min(g.options, key=lambda o: o.bytes).cost for g in groups)
    assert got.cost < smallest  # the budget affords more than the smallest types, and the DP uses it

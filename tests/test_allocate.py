"""The byte-budget allocator (methods/allocate.py) against brute force on small instances."""

from __future__ import annotations

import itertools
import random

import pytest

from quantbench.errors import QuantbenchError
from quantbench.methods.allocate import Allocation, Frontier, Group, Option


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
    """Never over budget, and never worse than the exact optimum at budget - tolerance * (budget - smallest)."""
    rng = random.Random(100 + seed)
    groups = random_groups(rng, 5, 4, max_bytes=5000)
    top = sum(max(o.bytes for o in g.options) for g in groups)
    smallest = sum(min(o.bytes for o in g.options) for g in groups)
    tolerance = 0.05
    # at least 2 bytes a cell: 5 groups / 0.05 = 100 cells, so more than 200 bytes above the smallest
    for budget in sorted(rng.sample(range(smallest + 400, top + 1), 15)):
        frontier = Frontier(groups, budget, tolerance=tolerance)
        assert frontier.unit > 1
        got = frontier.solve(budget)
        assert got.bytes <= budget
        assert got.cost <= brute_force(groups, budget - int(tolerance * (budget - smallest)))[0] + 1e-12
        assert got.cost >= brute_force(groups, budget)[0] - 1e-12  # the DP cannot beat the true optimum


def test_rounding_cannot_hide_a_plan_that_fits_to_the_byte():
    """Two groups whose best options fill the budget exactly: rounded up to cells they do not fit, and
    the DP alone settles for less; polishing the leftover bytes (or seeding with that plan) finds it."""
    groups = [Group("a", (Option("small", 1000, 1.0), Option("big", 1506, 0.0))),
              Group("b", (Option("small", 1000, 1.0), Option("big", 1506, 0.0)))]
    budget = 3012
    frontier = Frontier(groups, budget, tolerance=0.2)  # 0.2 * 1012 // 2 = 101 B a cell: 10 cells; 506 B is 6
    assert (frontier.unit, frontier.cells) == (101, 10)
    assert min(p.cost for p in frontier.points()) == 1.0  # the DP's own frontier: one "big" fits in cells, two do not
    assert frontier.solve(budget).cost == 0.0 == brute_force(groups, budget)[0]
    seed = frontier.allocation({"a": "big", "b": "big"})
    assert (seed.bytes, seed.cost) == (3012, 0.0)
    assert frontier.polish(seed, budget) == seed  # nothing left to spend


@pytest.mark.parametrize("seed", range(6))
def test_polish_only_improves_and_stays_in_budget(seed):
    rng = random.Random(200 + seed)
    groups = random_groups(rng, 6, 4, max_bytes=300)
    smallest = {g.name: min(g.options, key=lambda o: o.bytes).label for g in groups}
    frontier = Frontier(groups, sum(max(o.bytes for o in g.options) for g in groups))
    start = frontier.allocation(smallest)
    for budget in rng.sample(range(start.bytes, frontier.max_bytes + 1), 10):
        got = frontier.polish(start, budget)
        assert got.bytes <= budget and got.cost <= start.cost
        # a local optimum: no single swap fits and lowers the cost
        for g in groups:
            now = next(o for o in g.options if o.label == got.choice[g.name])
            assert not any(o.cost < now.cost and got.bytes - now.bytes + o.bytes <= budget for o in g.options)


def test_allocation_of_a_choice_names_every_group():
    groups = [Group("a", (Option("x", 10, 1.0),)), Group("b", (Option("x", 5, 2.0),))]
    frontier = Frontier(groups, 20)
    assert frontier.allocation({"a": "x", "b": "x"}) == Allocation({"a": "x", "b": "x"}, 15, 3.0)
    with pytest.raises(QuantbenchError, match="every group"):
        frontier.allocation({"a": "x"})


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

"""Choose one option per group (a storage type per tensor) to minimise total cost under a byte budget.

The multiple-choice knapsack: groups g = 1..G, each with options j of (bytes_gj, cost_gj); pick exactly one
option per group, minimising sum cost subject to sum bytes <= budget. Costs are additive estimates (here:
the predicted increase in mean KL divergence from quantizing one tensor to one type).

Solved exactly by dynamic programming over the bytes ABOVE each group's smallest option (every
allocation pays those), counted in cells of `unit` bytes, each option's extra bytes rounded UP to whole
cells:

    best_g[c] = min_j  best_{g-1}[c - w_gj] + cost_gj          w_gj = ceil((bytes_gj - min_j' bytes_gj') / unit)

so a solution that fits in cells fits in bytes. With R = budget - (sum of the smallest options) and
unit = floor(tolerance * R / G), the rounding adds at most G * unit <= tolerance * R <= tolerance * budget,
so the cost found at `budget` is at most the true optimum at budget - tolerance * R: exact at that
granularity, within 0.1% of the budget by default (much less where the smallest options are most of it,
e.g. a KV cache). One pass gives every capacity at once, i.e. the whole cost-vs-bytes frontier.
`solve` then spends what the rounding left over in exact bytes (`polish`), so a solution that fits
exactly is not lost to rounding when a single swap reaches it.

Format-neutral: groups and options are labels, bytes and costs; nothing here knows about GGUF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class Option:
    label: str  # e.g. "Q4_K"
    bytes: int
    cost: float


@dataclass(frozen=True)
class Group:
    name: str  # e.g. "blk.3.ffn_down.weight"
    options: tuple[Option, ...]

    def __post_init__(self):
        if not self.options:
            raise QuantbenchError(f"{self.name}: no option to choose from")
        for o in self.options:
            if o.bytes < 0 or not math.isfinite(o.cost):
                raise QuantbenchError(f"{self.name}/{o.label}: bytes must be >= 0 and cost finite")


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, str]  # group name -> option label
    bytes: int  # exact, sum of the chosen options' bytes
    cost: float  # sum of the chosen options' costs


class Frontier:
    """The solved DP table: the cheapest allocation for every capacity up to `max_bytes`."""

    def __init__(self, groups: list[Group], max_bytes: int, tolerance: float = 1e-3):
        if not groups:
            raise QuantbenchError("nothing to allocate: no groups")
        if not 0 < tolerance < 1:
            raise QuantbenchError("tolerance must be in (0, 1)")
        self.groups = list(groups)
        self.max_bytes = int(max_bytes)
        self.tolerance = tolerance
        self._floor = [min(o.bytes for o in g.options) for g in self.groups]  # every allocation pays these
        self.min_bytes = sum(self._floor)
        if self.max_bytes < self.min_bytes:
            raise QuantbenchError(
                f"the budget ({self.max_bytes:,} B) is below the smallest allocation ({self.min_bytes:,} B)"
            )
        self.unit = max(1, int(tolerance * (self.max_bytes - self.min_bytes)) // len(self.groups))
        self.cells = (self.max_bytes - self.min_bytes) // self.unit  # capacities 0..cells above min_bytes
        INF = np.inf
        best = np.full(self.cells + 1, INF)  # best[c]: least cost using exactly c cells (groups so far)
        best[0] = 0.0
        if max(len(g.options) for g in self.groups) > 255:
            raise QuantbenchError("at most 255 options per group")
        self._choice = np.zeros((len(self.groups), self.cells + 1), dtype=np.uint8)  # argmin option per (group, c)
        for g, group in enumerate(self.groups):
            new = np.full(self.cells + 1, INF)
            for j, option in enumerate(group.options):
                w = self._cells(g, option)
                if w > self.cells:
                    continue
                candidate = best[: self.cells + 1 - w] + option.cost
                better = candidate < new[w:]
                new[w:][better] = candidate[better]
                self._choice[g, w:][better] = j
            best = new
        self._best_exact = best
        # cheapest at capacity <= c, and the exact-cell count that achieves it
        self._best = np.minimum.accumulate(best)
        ends = np.where(np.isfinite(best), np.arange(self.cells + 1), -1)
        improves = np.r_[True, best[1:] < self._best[:-1]]
        ends = np.where(improves & np.isfinite(best), ends, -1)
        self._end = np.maximum.accumulate(ends)

    def _cells(self, g: int, option: Option) -> int:
        return -(-(option.bytes - self._floor[g]) // self.unit)  # ceil

    def cells_for(self, budget_bytes: int) -> int:
        return min(self.cells, (int(budget_bytes) - self.min_bytes) // self.unit)

    def solve(self, budget_bytes: int) -> Allocation:
        """The cheapest allocation whose exact bytes are <= budget_bytes (<= max_bytes)."""
        if budget_bytes > self.max_bytes:
            raise QuantbenchError(f"budget {budget_bytes:,} B is above the frontier's range ({self.max_bytes:,} B)")
        if budget_bytes < self.min_bytes:
            raise QuantbenchError(f"the budget ({budget_bytes:,} B) is below the smallest allocation ({self.min_bytes:,} B)")
        return self.polish(self._trace(int(self._end[self.cells_for(budget_bytes)])), budget_bytes)

    def allocation(self, choice: dict[str, str]) -> Allocation:
        """The exact bytes and cost of a given choice (every group named once)."""
        if set(choice) != {g.name for g in self.groups}:
            raise QuantbenchError("a choice must name every group exactly once")
        picked = [next(o for o in g.options if o.label == choice[g.name]) for g in self.groups]
        return Allocation({g.name: o.label for g, o in zip(self.groups, picked)}, sum(o.bytes for o in picked),
                          sum(o.cost for o in picked))

    def polish(self, allocation: Allocation, budget_bytes: int) -> Allocation:
        """Spend the exact bytes left under the budget: repeatedly make the single-group swap that lowers
        the cost most and still fits, until none does. Never raises the cost or leaves the budget."""
        current = {g.name: next(o for o in g.options if o.label == allocation.choice[g.name]) for g in self.groups}
        total = sum(o.bytes for o in current.values())
        while True:
            slack = budget_bytes - total
            best = None  # (cost decrease, group, option)
            for g in self.groups:
                now = current[g.name]
                for o in g.options:
                    gain = now.cost - o.cost
                    if gain > 0 and o.bytes - now.bytes <= slack and (best is None or gain > best[0]):
                        best = (gain, g, o)
            if best is None:
                return self.allocation({name: o.label for name, o in current.items()})
            _, g, o = best
            total += o.bytes - current[g.name].bytes
            current[g.name] = o

    def _trace(self, c: int) -> Allocation:
        choice = {}
        for g in range(len(self.groups) - 1, -1, -1):
            option = self.groups[g].options[int(self._choice[g, c])]
            choice[self.groups[g].name] = option.label
            c -= self._cells(g, option)
        if c != 0:
            raise AssertionError("knapsack trace did not end at zero cells")  # a bug, not bad input
        return self.allocation(choice)

    def points(self, max_points: int = 400) -> list[Allocation]:
        """Frontier allocations where the cost strictly drops, thinned to at most `max_points`."""
        c_all = np.flatnonzero(np.isfinite(self._best_exact) & (self._end == np.arange(self.cells + 1)))
        if len(c_all) > max_points:
            c_all = c_all[np.unique(np.linspace(0, len(c_all) - 1, max_points).round().astype(int))]
        return [self._trace(int(c)) for c in c_all]


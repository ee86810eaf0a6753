"""The metrics an evaluation measures, registered where they are defined.

Two kinds, by what they need:
- a window metric streams the scored windows once, beside the others: for each window it is given
  the candidate's log-probabilities, the target tokens and the reference's log-probabilities
  (`add`), and at the end it returns its numbers (`summary`). Perplexity, KL divergence and top-1
  agreement are one (eval/divergence.py).
- a runtime metric is given the loaded runtime and the job, once: speed runs in the "generation"
  phase (before the peak-memory reading, which is meant to be what running the model costs), task
  accuracy in the "scoring" phase (after it).

Adding a metric: a module in quantbench/eval/ that calls `register_window_metric` or
`register_runtime_metric`, and its column in quantbench/report/tables.py's COLUMNS. Every module of
quantbench.eval is imported by `discover()`, so nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class WindowAccumulator(Protocol):
    def add(self, logprobs: torch.Tensor, targets: torch.Tensor, ref_logprobs: torch.Tensor | None) -> None: ...

    def summary(self) -> dict: ...


@dataclass(frozen=True)
class RuntimeMetric:
    name: str
    phase: str  # "generation" (before the peak-memory reading) or "scoring" (after it)
    measure: Callable  # (runtime, EvaluateJob) -> dict of row keys; {} when the job does not ask for it


PHASES = ("generation", "scoring")
WINDOW_METRICS: dict[str, Callable[[], WindowAccumulator]] = {}
RUNTIME_METRICS: dict[str, RuntimeMetric] = {}


def register_window_metric(name: str, accumulator: Callable[[], WindowAccumulator]) -> None:
    WINDOW_METRICS[name] = accumulator


def register_runtime_metric(name: str, phase: str, measure: Callable) -> None:
    if phase not in PHASES:
        raise ValueError(f"metric {name}: phase must be one of {PHASES}")
    RUNTIME_METRICS[name] = RuntimeMetric(name, phase, measure)


def discover() -> None:
    """Import every module of quantbench.eval, so each registers the metrics it defines."""
    import quantbench.eval

    for module in pkgutil.iter_modules(quantbench.eval.__path__):
        importlib.import_module(f"quantbench.eval.{module.name}")

"""The recipe contract and its registry."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from quantbench.errors import QuantbenchError

if TYPE_CHECKING:
    from quantbench.arch import ArchSpec, TensorSpec
    from quantbench.runtimes.base import Runtime
    from quantbench.sources.model import ModelSource

log = logging.getLogger(__name__)

_REGISTRY: dict[str, "Recipe"] = {}


@dataclass(frozen=True)
class QuantizeJob:
    """Everything a recipe needs to write one artifact."""

    source: "ModelSource"  # the full-precision model (an HF folder)
    out_dir: Path  # a temporary folder; the API renames it when quantize returns
    device: str  # "cpu" or "cuda"
    # Calibration token sequences (from the calibration split, never the evaluation split).
    # A callable so that methods without calibration never tokenize anything.
    calibration: Callable[[], list[list[int]]] = field(default=lambda: [])
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is stored by a method: bytes include all quantization state."""

    name: str
    numel: int
    stored_bytes: int
    quantized: bool
    storage: str  # e.g. "nf4+absmax(fp32)/64", "Q6_K", "bf16"


class Recipe:
    """Base class. Subclasses set the class attributes and implement the methods they support."""

    name: str = ""
    family: str = ""
    runtime: str = "transformers"  # which runtime opens the artifact: "transformers" or "llama.cpp"
    description: str = ""
    needs_calibration: bool = False
    # How quantize() uses memory, for `quantbench plan`'s quantize-peak estimate: one of the names in
    # quantbench.plan.QUANTIZE_STRATEGIES; "" = the family's entry in quantbench.plan.QUANTIZE_STRATEGY_BY_FAMILY.
    quantize_strategy: str = ""

    def unavailable_reason(self, device: str) -> str | None:
        """None if this machine can run the recipe on `device`, else what is missing and how to fix it."""
        return None

    def quantize(self, job: QuantizeJob) -> dict:
        """Write the artifact into job.out_dir; return metadata recorded in quantbench.json."""
        raise NotImplementedError

    def open(self, artifact: Path, device: str) -> "Runtime":
        """Load an artifact written by quantize for measurement and generation."""
        raise NotImplementedError

    def plan_tensor(self, tensor: "TensorSpec", arch: "ArchSpec") -> TensorPlan:
        """Exact stored bytes of one tensor under this method, from shapes alone (quantbench plan)."""
        raise NotImplementedError(f"{self.name}: no size plan")


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _REGISTRY:
        raise ValueError(f"recipe {recipe.name} registered twice")
    _REGISTRY[recipe.name] = recipe
    return recipe


def _load_families() -> None:
    from quantbench.recipes import FAMILY_MODULES

    for module in FAMILY_MODULES:
        importlib.import_module(module)


def all_recipes() -> list[Recipe]:
    _load_families()
    return list(_REGISTRY.values())


def get_recipe(name: str) -> Recipe:
    _load_families()
    if name not in _REGISTRY:
        raise QuantbenchError(f"unknown method '{name}'; `quantbench methods` lists the methods")
    return _REGISTRY[name]

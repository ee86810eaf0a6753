"""The recipe contract and its registry.

A recipe is everything quantbench knows about one method: its family, the runtime that opens its
artifacts, how `quantize` uses memory (`strategy`), the exact bytes of each tensor (`plan_tensor`),
and, where it can be applied in place to a model, how the synthetic bench builds it (`bench_apply`).
Recipe modules are discovered: every module in the quantbench.recipes package is imported and
registers its recipes with `register`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from quantbench.errors import QuantbenchError
from quantbench.recipes.strategy import QuantizeStrategy

if TYPE_CHECKING:
    from quantbench.arch import ArchSpec, TensorSpec
    from quantbench.runtimes.base import Runtime
    from quantbench.sources.model import ModelSource

log = logging.getLogger(__name__)

_REGISTRY: dict[str, "Recipe"] = {}


@dataclass(frozen=True)
class QuantizeOptions:
    """Settings of one quantize run that recipes read. An unknown name is an error, never ignored."""

    calibration_samples: int | None = None  # as requested by the user; recorded beside what was used
    calibration_length: int | None = None
    damp: float = 0.01  # GPTQ: fraction of mean diag(H) added to the diagonal
    act_order: bool | None = None  # GPTQ: columns in descending diag(H); None = the recipe's own
    true_sequential: bool = True  # GPTQ: quantize a layer's linears group by group
    batch_size: int | None = None  # calibration samples per forward chunk; None = about 8192 tokens
    dtype: str = "float16"  # integer-grid recipes: unquantized tensors and scales ("float16" or "bfloat16")
    # GGUF recipes: quantbench's metadata, written into the file as quantbench.* key-values
    # (formats/gguf_metadata.py), so a single .gguf artifact says where it came from
    gguf_metadata: dict | None = None

    @classmethod
    def from_dict(cls, options: dict) -> "QuantizeOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise QuantbenchError(f"unknown quantize option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**options)


@dataclass(frozen=True)
class QuantizeJob:
    """Everything a recipe needs to write one artifact."""

    source: "ModelSource"  # the full-precision model (an HF folder)
    out_dir: Path  # a temporary folder; the API renames it when quantize returns
    device: str  # "cpu" or "cuda"
    # Calibration token sequences (from the calibration split, never the evaluation split).
    # A callable so that methods without calibration never tokenize anything.
    calibration: Callable[[], list[list[int]]] = field(default=lambda: [])
    options: QuantizeOptions = field(default_factory=QuantizeOptions)

    def __post_init__(self):
        if isinstance(self.options, dict):  # as it arrives from a worker's JSON
            object.__setattr__(self, "options", QuantizeOptions.from_dict(self.options))


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
    family: str = ""  # e.g. "bitsandbytes", "gguf", "gptq"
    runtime: str = "transformers"  # the `name` of the runtime (quantbench.runtimes) that opens its artifacts
    description: str = ""
    needs_calibration: bool = False
    strategy: QuantizeStrategy | None = None  # how quantize() uses memory (quantbench.recipes.strategy); required
    # `bench_apply` is written: the synthetic bench can build this method in place on random weights.
    in_place: bool = False

    def unavailable_reason(self, device: str) -> str | None:
        """None if this machine can run the recipe on `device`, else what is missing and how to fix it."""
        return None

    def quantize(self, job: QuantizeJob) -> dict:
        """Write the artifact into job.out_dir; return metadata recorded in quantbench.json."""
        raise NotImplementedError

    def open(self, artifact: Path, device: str) -> "Runtime":
        """Load an artifact written by quantize for measurement and generation."""
        raise NotImplementedError

    def plan_tensor(self, tensor: "TensorSpec", arch: "ArchSpec", device: str = "cuda", resident: bool = False) -> TensorPlan:
        """Exact stored bytes of one tensor under this method, from shapes alone (quantbench plan).

        `device` is where the method runs (layouts may depend on it); `resident=True` asks for the
        bytes held in memory there instead of the bytes written.
        """
        raise NotImplementedError(f"{self.name}: no size plan")

    def compute_dtype(self, device: str):
        """The torch dtype the model computes in on `device` (activations; the bench's load dtype)."""
        import torch

        from quantbench.device import best_half_dtype, cuda_available

        if device.startswith("cuda") and not cuda_available():
            return torch.bfloat16  # a plan for a GPU that is not in this machine
        return best_half_dtype(device)

    def bench_apply(self, model, arch: "ArchSpec", device: str):
        """Turn `model` (random weights in compute_dtype(device), on `device`) into this method, in place."""
        raise NotImplementedError(f"{self.name}: cannot be applied in place")


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry; the contract's required attributes are checked here, once."""
    if recipe.name in _REGISTRY:
        raise ValueError(f"recipe {recipe.name} registered twice")
    missing = [attr for attr in ("name", "family", "runtime", "description") if not getattr(recipe, attr)]
    if recipe.strategy is None:
        missing.append("strategy")
    if missing:
        raise ValueError(f"recipe {recipe.name or type(recipe).__name__} does not set {', '.join(missing)} (see recipes/base.py)")
    _REGISTRY[recipe.name] = recipe
    return recipe


_loaded_modules: set[str] = set()


def _load_families() -> None:
    """Import every module of the quantbench.recipes package (and of any folder added to its __path__)."""
    import quantbench.recipes as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name not in _loaded_modules:
            importlib.import_module(info.name)
            _loaded_modules.add(info.name)


def all_recipes() -> list[Recipe]:
    _load_families()
    return list(_REGISTRY.values())


def get_recipe(name: str) -> Recipe:
    _load_families()
    if name not in _REGISTRY:
        raise QuantbenchError(f"unknown method '{name}'; `quantbench methods` lists the methods")
    return _REGISTRY[name]

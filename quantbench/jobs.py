"""The work that runs in a fresh process (quantbench.worker), as frozen dataclasses.

The API builds a job, the worker runs `job.run()` in a new Python process so that the job's peak
memory is its own, and the JSON that crosses between the two is derived from the fields: nothing
travels that a job does not declare. The bodies live where their subject does: the evaluation in
quantbench.eval.evaluate, the reference in quantbench.eval.reference, quantization in the recipe.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

from quantbench.eval.perplexity import Window


@dataclass(frozen=True)
class ReferenceJob:
    """Full-precision log-probabilities of every window, written once to the reference cache."""

    kind: ClassVar[str] = "reference"
    model_path: str
    device: str
    windows: tuple[Window, ...]
    reference_path: str
    meta: dict  # what the cache file says about itself (model, text, protocol)
    trust_remote_code: bool = False
    # Per-device cap ({0: bytes, "cpu": bytes}, accelerate's max_memory) for a model larger than one GPU
    max_memory: dict | None = None

    def run(self) -> dict:
        from quantbench.eval.reference import compute_reference
        from quantbench.runtimes.hf import HFRuntime

        runtime = HFRuntime.load(Path(self.model_path), self.device, dtype=None, trust_remote_code=self.trust_remote_code,
                                 max_memory=self.max_memory or None)
        placement = {"max_memory": self.max_memory, "device_map": runtime.placement} if self.max_memory else {}
        meta = {**self.meta, "dtype": runtime.dtype, "device": runtime.device, **placement}
        compute_reference(runtime, list(self.windows), Path(self.reference_path), meta)
        return {"dtype": runtime.dtype, "device": runtime.device, **placement}


@dataclass(frozen=True)
class QuantizeArtifactJob:
    """One method applied to one model, written into `out_dir`."""

    kind: ClassVar[str] = "quantize"
    method: str
    model_path: str
    model_name: str
    model_fingerprint: str
    out_dir: str
    device: str
    calibration: tuple[tuple[int, ...], ...]  # the samples drawn from the calibration split
    calibration_samples: int  # as the user requested (recorded beside what was used)
    calibration_length: int
    replaced_bytes: int = 0  # an earlier artifact at the output that this one replaces (its disk comes back)
    gguf_metadata: dict | None = None  # GGUF recipes: written into the file as quantbench.* key-values

    def run(self) -> dict:
        from quantbench.device import peak_bytes, reset_peak
        from quantbench.plan.resources import check_quantize_resources
        from quantbench.recipes import get_recipe
        from quantbench.recipes.base import QuantizeJob, QuantizeOptions
        from quantbench.sources.model import ModelSource

        recipe = get_recipe(self.method)
        source = ModelSource(Path(self.model_path), self.model_name, self.model_fingerprint)
        calibration = [list(sample) for sample in self.calibration]
        # disk, RAM and GPU memory checked against the plan before any work starts
        resources = check_quantize_resources(Path(self.model_path), self.method, Path(self.out_dir), self.device,
                                             len(calibration), self.calibration_length, self.replaced_bytes)
        options = QuantizeOptions(calibration_samples=self.calibration_samples, calibration_length=self.calibration_length,
                                  gguf_metadata=self.gguf_metadata)
        reset_peak(self.device)
        t0 = time.perf_counter()
        meta = recipe.quantize(QuantizeJob(source, Path(self.out_dir), self.device, lambda: calibration, options))
        return {"metadata": meta, "quantize_seconds": time.perf_counter() - t0, "quantize_peak_bytes": peak_bytes(self.device),
                "resources_checked": resources}


@dataclass(frozen=True)
class SpeedRequest:
    prompt_ids: tuple[int, ...]
    new_tokens: int
    batch: int
    repeats: int
    warmup: int


@dataclass(frozen=True)
class EvaluateJob:
    """Load one artifact and run every registered metric on it (quantbench.eval.evaluate)."""

    kind: ClassVar[str] = "evaluate"
    artifact: str
    device: str
    windows: tuple[Window, ...]
    reference_path: str
    speed: SpeedRequest | None = None  # None: --no-speed
    tasks: tuple[dict, ...] | None = None  # tokenized multiple-choice items (quantbench.eval.tasks)
    runtime: str | None = None  # None: the artifact's default runtime on this device (recipes/open.py)
    import_first: str | None = None  # a module the worker imports before numpy/torch (Runtime.import_first_on_cuda)

    def run(self) -> dict:
        from quantbench.eval.evaluate import evaluate_in_this_process

        return evaluate_in_this_process(self)


@dataclass(frozen=True)
class TaskJob:
    """Task accuracy alone, of the full-precision model (the table shows it beside every method's)."""

    kind: ClassVar[str] = "tasks"
    artifact: str
    device: str
    tasks: tuple[dict, ...]

    def run(self) -> dict:
        from quantbench.eval.tasks import task_accuracy
        from quantbench.recipes.open import open_artifact

        runtime = open_artifact(Path(self.artifact), self.device)
        try:
            return task_accuracy(runtime, list(self.tasks))
        finally:
            runtime.close()


JOBS = {job.kind: job for job in (ReferenceJob, QuantizeArtifactJob, EvaluateJob, TaskJob)}
# Fields that hold dataclasses (or tuples of them): rebuilt from their JSON dicts.
_NESTED = {"windows": lambda d: Window(**d), "speed": lambda d: SpeedRequest(**{**d, "prompt_ids": tuple(d["prompt_ids"])}),
           # JSON turned accelerate's integer GPU keys into strings
           "max_memory": lambda d: {int(k) if str(k).isdigit() else k: v for k, v in d.items()}}


def to_json(job) -> dict:
    return {"kind": job.kind, **asdict(job)}


def from_json(data: dict):
    cls = JOBS[data["kind"]]
    values = {}
    for f in fields(cls):
        value = data.get(f.name)
        if f.name in _NESTED and value is not None:
            nested = _NESTED[f.name]
            value = tuple(nested(v) for v in value) if isinstance(value, list) else nested(value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if f.name in data:
            values[f.name] = value
    return cls(**values)

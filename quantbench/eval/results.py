"""A row of the comparison, typed: who was measured, what the artifact stores, what the evaluation
measured. `to_json` gives the row of the JSON report (the contract that report/, the recommendation
and users' scripts read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Storage:
    """Read back from the written artifact and its metadata (quantbench.eval.memory)."""

    weight_bytes: int
    bits_per_weight: float
    bits_per_weight_quantized: float | None
    quantize_seconds: float | None  # None: not written by quantbench (a plain HF folder or .gguf)
    quantize_peak_bytes: int | None


@dataclass(frozen=True)
class Measured:
    """What the evaluation worker measured (quantbench.eval.evaluate); `metrics` holds every
    registered metric's numbers by row key (ppl, kld_mean, decode_tok_s, task_acc, ...)."""

    runtime: str
    device: str
    dtype: str
    load_seconds: float
    reported_footprint_bytes: int | None
    loaded_rss_bytes: int
    peak_memory_bytes: int
    peak_memory_kind: str
    process_baseline_rss_bytes: int
    eval_peak_memory_bytes: int
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultRow:
    method: str
    runtime: str
    device: str
    status: str = "ok"  # "ok", "failed: <why>" or "unavailable: <why>"
    storage: Storage | None = None
    measured: Measured | None = None
    delta_ppl: float | None = None  # ppl - the reference's ppl, both from the same accumulator
    gpu: str | None = None  # compare --devices: the device this row's processes saw
    kv_cache_type: str | None = None  # a fitted GGUF (quantbench fit): the KV-cache type it was fitted with
    predicted_kld: float | None = None  # ... and the mean KLD its sensitivities predicted
    runtime_memory: Mapping[str, Any] | None = None  # compare --memory-budget: quantbench.fit.budget's rule
    # Per-token values (nll, kld, top1: one list per window) and per-item task correctness, for paired
    # differences between methods (report/recommend.py); not part of the JSON row.
    per_token: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def not_measured(cls, method: str, runtime: str, device: str, status: str) -> "ResultRow":
        return cls(method, runtime, device, status)

    @classmethod
    def from_measurement(cls, method: str, storage: Storage, measured: Measured, reference_ppl: float,
                         per_token: Mapping[str, Any] | None = None) -> "ResultRow":
        return cls(method, measured.runtime, measured.device, "ok", storage, measured,
                   measured.metrics["ppl"] - reference_ppl, per_token=per_token)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        if self.measured is None:
            return {"method": self.method, "runtime": self.runtime, "device": self.device, "status": self.status}
        m = self.measured
        row = {key: getattr(m, key) for key in Measured.__dataclass_fields__ if key != "metrics"}
        row.update(m.metrics)
        row["method"] = self.method
        row.update({key: getattr(self.storage, key) for key in Storage.__dataclass_fields__})
        row["delta_ppl"] = self.delta_ppl
        row["status"] = self.status
        for key in ("gpu", "kv_cache_type", "predicted_kld", "runtime_memory"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row

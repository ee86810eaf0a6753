"""How a recipe's `quantize` uses memory: one object per way of working, each with its peak formula.

A recipe names its strategy (`Recipe.strategy`); `quantbench plan` asks it for the peak while
quantizing, as named components, on the device or in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.arch import LINEAR, ArchSpec


@dataclass(frozen=True)
class PeakInputs:
    """What the peak formulas read: the model, the planned bytes and the run's settings."""

    arch: ArchSpec
    stored: dict[str, int]  # tensor name -> stored bytes under the method
    source_bytes: int  # bytes per value of the source checkpoint
    compute_bytes: int  # bytes per value the model computes in on the device
    device: str
    calibration_samples: int
    calibration_length: int

    @property
    def largest(self) -> int:
        return max(t.numel for t in self.arch.tensors())

    @property
    def largest_linear(self):
        return max((t for t in self.arch.tensors() if t.role == LINEAR), key=lambda t: t.numel)

    @property
    def weight_bytes(self) -> int:
        return sum(self.stored.values())


@dataclass(frozen=True)
class QuantizeStrategy:
    name: str
    runs_on: str  # "device" (the user's device) or "host" (CPU RAM, whatever the device)
    description: str
    work_bytes: int | None = None  # bytes per value the quantizer works in; None: the model's compute dtype

    def parts(self, p: PeakInputs, work: int) -> tuple[dict[str, int], dict[str, int]]:
        """(device parts, host parts) of the peak: named byte counts."""
        raise NotImplementedError

    def peak(self, p: PeakInputs) -> dict:
        """Peak memory while quantizing, as named components; `peak_bytes` is on the device it runs on."""
        device_parts, host_parts = self.parts(p, self.work_bytes or p.compute_bytes)
        on_host = self.runs_on == "host" or p.device == "cpu"
        if on_host:
            host_parts = {**host_parts, **device_parts}
            device_parts = {}
        host_peak = sum(host_parts.values())
        return {
            "strategy": self.name,
            "runs_on": "host" if on_host else p.device,
            "description": self.description,
            "peak_bytes": host_peak if on_host else sum(device_parts.values()),
            "host_peak_bytes": host_peak,
            "device_parts": device_parts,
            "host_parts": host_parts,
            "disk_bytes": sum(self.disk(p).values()),
            "disk_parts": self.disk(p),
        }

    def disk(self, p: PeakInputs) -> dict[str, int]:
        from quantbench.streaming.budget import disk_budget

        return disk_budget("", p.arch, p.weight_bytes, p.source_bytes)


class LoadConvert(QuantizeStrategy):
    def parts(self, p, work):
        return {}, {"converted model": p.weight_bytes, "one source tensor being converted": p.largest * p.source_bytes}


LOAD_CONVERT = LoadConvert("load-convert", "host", "transformers loads the model in the target dtype tensor by tensor and saves it")


@dataclass(frozen=True)
class StreamingFromDisk(QuantizeStrategy):
    """The checkpoint is read one tensor or layer at a time and the artifact written as it goes
    (quantbench/streaming): the peak is quantbench.streaming.budget's, every term named, plus the disk."""

    kind: str = ""  # a quantbench.streaming.budget.STRATEGY_KINDS entry

    def budget(self, p: PeakInputs):
        from quantbench.streaming.budget import streaming_budget

        return streaming_budget(self.kind, p.arch, p.device, p.source_bytes, calibration_samples=p.calibration_samples,
                                calibration_length=p.calibration_length, batch_size=max(1, 8192 // max(1, p.calibration_length)))

    def peak(self, p: PeakInputs) -> dict:
        from quantbench.streaming.budget import disk_budget

        b = self.budget(p)
        worst = lambda phases: max(phases.values(), key=lambda t: sum(t.values()), default={})  # noqa: E731
        on_host = not b.device_phases
        disk = disk_budget(self.kind, p.arch, p.weight_bytes, p.source_bytes)
        return {
            "strategy": self.name,
            "runs_on": "host" if on_host else p.device,
            "description": self.description,
            "peak_bytes": b.host_peak_bytes if on_host else b.device_peak_bytes,
            "host_peak_bytes": b.host_peak_bytes,
            "device_parts": worst(b.device_phases),
            "host_parts": {"process baseline": b.baseline_host_bytes, **worst(b.host_phases)},
            "phases": {"host": b.host_phases, "device": b.device_phases},
            "budget_lines": b.lines(),
            "disk_bytes": sum(disk.values()),
            "disk_parts": disk,
        }


STREAM_RTN = StreamingFromDisk(
    "streaming-per-tensor", "device",
    "one linear at a time is read from the checkpoint (pread), quantized on the device, packed and appended to the artifact",
    kind="rtn",
)
STREAM_GPTQ = StreamingFromDisk(
    "streaming-layer-by-layer", "device",
    "one decoder layer at a time is read from the checkpoint onto the device with its Hessians and the calibration "
    "activations, quantized, run, and appended to the artifact (methods/sequential.py per layer)",
    kind="gptq",
)
STREAM_AWQ = StreamingFromDisk(STREAM_GPTQ.name, "device", STREAM_GPTQ.description, kind="awq")
STREAM_BNB = StreamingFromDisk(
    "streaming-per-tensor", "device",
    "one tensor at a time is read from the checkpoint, quantized by bitsandbytes on the device and appended to the artifact",
    kind="bnb",
)
STREAM_GGUF_WRITER = StreamingFromDisk(
    "streaming-per-tensor", "host",
    "quantbench's GGUF writer reads one tensor at a time from the checkpoint (pread), encodes it from fp32 and appends it",
    kind="gguf-writer",
)
STREAM_GGUF_LLAMA_CPP = StreamingFromDisk(
    "writer-then-llama.cpp", "host",
    "the writer streams a lossless intermediate GGUF to disk, then llama.cpp's quantizer converts it tensor by tensor "
    "(it maps the intermediate: file-backed pages, not anonymous memory); the intermediate is deleted after",
    kind="gguf-llama.cpp",
)

"""How a recipe's `quantize` uses memory: one object per way of working, each with its peak formula.

A recipe names its strategy (`Recipe.strategy`); `quantbench plan` asks it for the peak while
quantizing, as named components, on the device or in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.arch import LINEAR, ArchSpec

# transformers' save_pretrained shards at 50 GB (modeling_utils.save_pretrained max_shard_size): a
# CUDA-resident shard is copied to host memory whole before it is written.
SAVE_SHARD_BYTES = 50 * 10**9


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
        }


class LoadConvert(QuantizeStrategy):
    def parts(self, p, work):
        return {}, {"converted model": p.weight_bytes, "one source tensor being converted": p.largest * p.source_bytes}


class QuantizeOnLoad(QuantizeStrategy):
    def parts(self, p, work):
        device = {
            "quantized model": p.weight_bytes,  # the stored layout; CPU repacking waits for a forward
            "one tensor in the load dtype before quantizing": p.largest * p.compute_bytes,
            "quantizer's working copy of it": p.largest_linear.numel * p.compute_bytes,
        }
        host = {"a saved shard copied from the device": min(p.weight_bytes, SAVE_SHARD_BYTES)} if p.device != "cpu" else {}
        return device, host


class WholeModel(QuantizeStrategy):
    def parts(self, p, work):
        return {}, {
            "whole source model": p.arch.num_params() * p.source_bytes,
            "fp32 copy of the largest tensor": p.largest * 4,
            "its quantized output": max(p.stored.values()),
        }


class Streaming(QuantizeStrategy):
    def parts(self, p, work):
        return {}, {"one source tensor in fp32": p.largest * work, "its stored form": max(p.stored.values())}


class ModelPerTensor(QuantizeStrategy):
    def parts(self, p, work):
        linear = p.largest_linear
        device = {"one linear in fp32": linear.numel * work, "its quantized form": p.stored[linear.name]}
        host = {"source model in fp32": p.arch.num_params() * work, "quantized output": p.weight_bytes}
        return device, host


class LayerByLayer(QuantizeStrategy):
    def parts(self, p, work):
        arch = p.arch
        rows, cols = p.largest_linear.shape
        device = {
            "one decoder layer in the working dtype": sum(t.numel for t in arch.tensors() if t.layer == 0) * work,
            # one Hessian per group of linears reading the same activation (ArchFamily.input_groups)
            "Hessians, cols^2 fp32 per input of one layer": sum(c * c * 4 for c in arch.input_widths().values()),
            "fp32 W, Q and Err of the largest linear, and its H^-1": 3 * rows * cols * 4 + cols * cols * 4,
            "calibration activations (layer inputs and outputs)": 2 * p.calibration_samples * p.calibration_length * arch.hidden_size * work,
        }
        host = {"source model in the working dtype": arch.num_params() * work, "quantized output": p.weight_bytes}
        return device, host

    def peak(self, p: PeakInputs) -> dict:
        return {**super().peak(p), "calibration": {"samples": p.calibration_samples, "length": p.calibration_length}}


LOAD_CONVERT = LoadConvert("load-convert", "host", "transformers loads the model in the target dtype tensor by tensor and saves it")
QUANTIZE_ON_LOAD = QuantizeOnLoad(
    "quantize-on-load", "device",
    "transformers loads each tensor to the device and bitsandbytes quantizes it there; "
    "saving from a GPU copies each shard to host memory",
)
WHOLE_MODEL = WholeModel(
    "whole-model", "host",
    "the whole source model is loaded (llama.cpp's quantize maps its input file in full), "
    "then each tensor is converted to fp32 and quantized",
)
STREAMING = Streaming(
    "streaming", "host",
    "one tensor at a time is read from the source shards, converted and written (quantbench's GGUF writer)",
    work_bytes=4,
)
MODEL_PER_TENSOR = ModelPerTensor(
    "fp32-model-per-tensor", "device",
    "the model is loaded in fp32 in host memory; each linear goes to the device alone (round-to-nearest)",
    work_bytes=4,
)
LAYER_BY_LAYER = LayerByLayer(
    "layer-by-layer", "device",
    "the model stays in host memory in fp32; one decoder layer at a time goes to the device with its "
    "Hessians and the calibration activations (methods/sequential.py)",
    work_bytes=4,
)

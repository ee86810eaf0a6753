"""What the integer-grid weight-only recipes share (rtn.py, gptq.py, awq.py): a compressed-tensors
checkpoint that plain transformers loads, and the layer-by-layer calibration driver.

Every linear of every decoder layer is quantized; embeddings, norms and an untied lm_head are stored
unquantized in 16 bits. Options (QuantizeJob.options, a QuantizeOptions): `dtype` ("float16" or
"bfloat16": unquantized tensors and scales), `batch_size` (calibration samples per forward chunk),
`calibration_samples` / `calibration_length` (recorded as requested beside what was used).

The group size of the name is a request: compressed-tensors needs one group size that divides every
linear's input width, so a model whose widths it does not divide gets the largest power-of-two
fraction of it that does (SmolLM2-135M: hidden 576 -> g128 becomes g64), recorded as `group_size`
beside `requested_group_size` in the metadata and in the size plan.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from quantbench.arch import LINEAR, ArchSpec, TensorSpec
from quantbench.errors import QuantbenchError
from quantbench.recipes.base import QuantizeJob, Recipe, TensorPlan
from quantbench.recipes.strategy import STREAM_GPTQ

if TYPE_CHECKING:
    from quantbench.streaming.intgrid import StreamedArtifact

log = logging.getLogger(__name__)

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json", "chat_template.jinja")


def linear_input_widths(arch: ArchSpec) -> list[int]:
    return [t.shape[1] for t in arch.tensors() if t.role == LINEAR]


class IntGridRecipe(Recipe):
    """A subclass sets `family`, `strategy` and writes quantize_streaming."""

    runtime = "transformers"

    def __init__(self, name: str, bits: int, group_size: int, description: str):
        self.name, self.bits, self.group_size, self.description = name, bits, group_size, description

    # -- what every integer-grid recipe shares --------------------------------------------------
    def unavailable_reason(self, device: str) -> str | None:
        try:
            import compressed_tensors  # noqa: F401
        except ImportError:
            return "the compressed-tensors package is missing: pip install compressed-tensors==0.20.0"
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA GPU on this machine; use --device cpu"
        return None

    def effective_group_size(self, arch: ArchSpec) -> int:
        from quantbench.formats.compressed_tensors import model_group_size

        return model_group_size(self.group_size, linear_input_widths(arch))

    def plan_tensor(self, tensor: TensorSpec, arch: ArchSpec, device="cuda", resident=False) -> TensorPlan:
        from quantbench.formats.compressed_tensors import linear_bytes

        if tensor.role == LINEAR:
            rows, cols = tensor.shape
            group = self.effective_group_size(arch)
            storage = f"int{self.bits} g{group} asym + fp16 scales + int{self.bits} zeros (compressed-tensors pack-quantized)"
            return TensorPlan(tensor.name, tensor.numel, linear_bytes(rows, cols, self.bits, group), True, storage)
        return TensorPlan(tensor.name, tensor.numel, tensor.numel * 2, False, "fp16")

    def open(self, artifact: Path, device: str):
        from quantbench.runtimes.hf import HFRuntime

        # On CPU, compute in fp32 (fp16 matmuls there are slow and imprecise); the stored fp16 values
        # and the dequantized weights are exact in fp32.
        return HFRuntime.load(artifact, device, dtype=torch.float32 if device == "cpu" else None)

    def quantize(self, job: QuantizeJob) -> dict:
        dtype_name = job.options.dtype
        if dtype_name not in STORAGE_DTYPES:
            raise QuantbenchError(f"dtype={dtype_name!r}: choose float16 or bfloat16")
        arch = ArchSpec.from_config(job.source.config())
        group_size = self.effective_group_size(arch)
        if group_size != self.group_size:
            log.warning("%s: group size %d does not divide every linear's input width; using %d", self.name, self.group_size, group_size)
        streamed, metadata = self.quantize_streaming(job, arch, group_size, dtype_name)
        for name in _TOKENIZER_FILES:
            if (job.source.path / name).is_file():
                shutil.copy2(job.source.path / name, job.out_dir / name)
        metadata.update(
            method=self.name,
            algorithm=self.family,
            bits=self.bits,
            requested_group_size=self.group_size,
            group_size=group_size,
            format="compressed-tensors pack-quantized",
            compressed_tensors_version=_ct_version(),
            storage_dtype=dtype_name,
            device=job.device,
            stored_tensor_bytes=sum(streamed.tensor_bytes.values()),
            shards=len(streamed.files),
            **streamed_memory(streamed),
        )
        if group_size != self.group_size:
            metadata["group_size_note"] = (
                f"requested g{self.group_size} does not divide input widths {sorted(set(linear_input_widths(arch)))}; "
                f"every linear uses g{group_size}"
            )
        return metadata

    def quantize_streaming(self, job: QuantizeJob, arch: ArchSpec, group_size: int, dtype_name: str) -> tuple["StreamedArtifact", dict]:
        """Quantize every decoder linear from the checkpoint into job.out_dir (quantbench.streaming.intgrid):
        (what was written, metadata to record)."""
        raise NotImplementedError


def streamed_memory(streamed: "StreamedArtifact") -> dict:
    """What a streamed job records about its memory: anonymous and file-backed peaks apart."""
    return {
        "quantize_seconds": streamed.seconds,
        "peak_device_bytes": streamed.peak_device_bytes,
        "peak_anon_bytes": streamed.memory.anon_bytes,
        "peak_file_bytes": streamed.memory.file_bytes,
        "baseline_anon_bytes": streamed.memory.baseline_anon_bytes,
        "peak_hwm_bytes": streamed.memory.hwm_bytes,
        "phase_peak_anon_bytes": streamed.memory.phases,  # streaming/budget.py's phase -> peak RssAnon
    }


def _ct_version() -> str:
    from compressed_tensors import __version__

    return __version__


class CalibratedRecipe(IntGridRecipe):
    """Layer by layer on calibration activations (methods/sequential.py)."""

    needs_calibration = True
    strategy = STREAM_GPTQ

    def calibration(self, job: QuantizeJob) -> tuple[list[list[int]], dict]:
        samples = job.calibration()
        if not samples:
            raise QuantbenchError(f"{self.name} needs calibration text: give --text or keep the default text, and samples > 0")
        length = len(samples[0])
        record = {
            "samples": len(samples),
            "length": length,
            "tokens": len(samples) * length,
            "requested_samples": job.options.calibration_samples,
            "requested_length": job.options.calibration_length,
            "split": "calibration",
        }
        return samples, record

    def run_streaming(self, job: QuantizeJob, samples, group_size: int, dtype_name: str, layer_fn) -> "StreamedArtifact":
        from quantbench.streaming.intgrid import quantize_layers_streaming

        batch = job.options.batch_size or max(1, 8192 // len(samples[0]))
        return quantize_layers_streaming(job.source.path, job.out_dir, samples, layer_fn, self.bits, group_size, dtype_name,
                                         job.device, batch, trust_remote_code=job.source.trust_remote_code)

    @staticmethod
    def summarize(result) -> dict:
        errors = result.errors
        worse = [name for name, e in errors.items() if e["error"] > e["rtn_error"]]
        mean = lambda key: sum(e[key] for e in errors.values()) / max(len(errors), 1)  # noqa: E731
        return {
            "layer_errors": {
                "measure": "||W X - W_hat X||^2 / ||W X||^2 per linear on the calibration inputs",
                "mean": mean("error"),
                "mean_rtn": mean("rtn_error"),
                "worse_than_rtn": worse,
                "per_linear": errors,
            },
            "notes": result.notes,
        }

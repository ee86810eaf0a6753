"""GGUF recipes: llama.cpp's file types, made from the user's model and measured through llama.cpp.

- `gguf-f32`, `gguf-f16`, `gguf-bf16`, `gguf-q8_0`: written directly by quantbench's GGUF writer
  (formats/gguf_writer.py), as llama.cpp's convert_hf_to_gguf.py writes them.
- `gguf-q6_k` ... `gguf-iq4_nl`: the writer produces a lossless intermediate GGUF (the source's own
  precision), then llama.cpp's own quantizer (`llama_model_quantize`) produces the file type, with its
  per-tensor mixture rules.
- `-imat` variants: quantbench computes the importance matrix on the full-precision reference model
  from the calibration split (methods/imatrix.py) and hands it to the quantizer.

`plan_tensor` reproduces llama.cpp's per-tensor type choice (src/llama-quant.cpp,
llama_tensor_get_type, llama-cpp-python 0.3.36's vendored llama.cpp) for dense Llama-family models;
tests check it against the types llama.cpp actually writes.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_writer import (
    SUPPORTED_ARCHITECTURES,
    WRITER_TYPES,
    ggml_tensor_bytes,
    write_gguf,
    writer_storage_type,
)
from quantbench.recipes.base import QuantizeJob, Recipe, TensorPlan, register

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.gguf"
UNQUANTIZED = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class GGUFFileType:
    name: str  # llama.cpp's spelling, e.g. "Q4_K_M"
    ftype: int  # llama_ftype (llama.h LLAMA_FTYPE_MOSTLY_*), written as general.file_type
    base: str  # the ggml type most tensors get (llama-quant.cpp llama_ftype_get_default_type)
    description: str


# llama.h / llama-quant.cpp. Bits per weight in the descriptions are llama.cpp's for Llama-3-8B-sized
# models (tools/quantize/README.md) and differ on small models, where fallbacks dominate.
FILE_TYPES = {
    ft.name: ft
    for ft in (
        GGUFFileType("F32", 0, "F32", "every tensor in fp32"),
        GGUFFileType("F16", 1, "F16", "2-D tensors in fp16, norms in fp32"),
        GGUFFileType("BF16", 32, "BF16", "2-D tensors in bf16, norms in fp32"),
        GGUFFileType("Q8_0", 7, "Q8_0", "8-bit, one fp16 scale per 32 (8.5 bpw)"),
        GGUFFileType("Q6_K", 18, "Q6_K", "6-bit K-quant (6.56 bpw)"),
        GGUFFileType("Q5_K_M", 17, "Q5_K", "5-bit K-quant, attn_v/ffn_down partly Q6_K"),
        GGUFFileType("Q5_K_S", 16, "Q5_K", "5-bit K-quant"),
        GGUFFileType("Q4_K_M", 15, "Q4_K", "4-bit K-quant, attn_v/ffn_down partly Q6_K (llama.cpp's usual default)"),
        GGUFFileType("Q4_K_S", 14, "Q4_K", "4-bit K-quant, first layers' attn_v/ffn_down Q5_K"),
        GGUFFileType("Q4_0", 2, "Q4_0", "4-bit, one fp16 scale per 32 (4.5 bpw)"),
        GGUFFileType("Q3_K_M", 12, "Q3_K", "3-bit K-quant, attn_v/attn_output/ffn_down at 4-5 bits"),
        GGUFFileType("Q3_K_S", 11, "Q3_K", "3-bit K-quant"),
        GGUFFileType("Q2_K", 10, "Q2_K", "2-bit K-quant, attn_v/attn_output/ffn_down at 3-4 bits"),
        GGUFFileType("IQ4_XS", 30, "IQ4_XS", "4-bit non-linear grid, super-blocks of 256 (4.25 bpw)"),
        GGUFFileType("IQ4_NL", 25, "IQ4_NL", "4-bit non-linear grid, blocks of 32 (4.5 bpw)"),
    )
}
QUANTIZER_TYPES = tuple(n for n in FILE_TYPES if n not in WRITER_TYPES)

# ---------------------------------------------------------------------------------------------------
# llama.cpp's per-tensor type choice (src/llama-quant.cpp), for dense Llama-family models


@dataclass(frozen=True)
class MixtureContext:
    """What llama_tensor_get_type reads about the model besides the tensor itself."""

    gguf_arch: str  # "llama" or "qwen2"
    n_layer: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool  # no output.weight in the file: token_embd doubles as the output matrix
    has_imatrix: bool

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv  # llama_hparams::n_gqa, integer division

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B: llama with 80 layers and GQA, qwen2 with 80 layers."""
        if self.n_layer != 80:
            return False
        return self.gguf_arch == "qwen2" or (self.gguf_arch == "llama" and self.n_head != self.n_head_kv)

    @classmethod
    def from_arch(cls, arch, has_imatrix: bool) -> "MixtureContext":
        if arch.model_type not in SUPPORTED_ARCHITECTURES:
            raise QuantbenchError(
                f"GGUF methods do not support architecture '{arch.model_type}'; supported model_type values: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        gguf_arch = SUPPORTED_ARCHITECTURES[arch.model_type][0].lower()
        return cls(gguf_arch, arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.tie_word_embeddings, has_imatrix)


def _block_size(type_name: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def _category(name: str) -> str:
    """llama-quant.cpp tensor_get_category (the categories a dense model has)."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, category in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return category
    return "other"


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp use_more_bits: the first and last eighth of the layers, and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


# Rows that are not whole super-blocks fall back (llama-quant.cpp tensor_type_fallback).
_FALLBACK = {"IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def _fallback(type_name: str, cols: int) -> str:
    if cols % _block_size(type_name) == 0:
        return type_name
    fallback = _FALLBACK.get(type_name, type_name)
    if cols % _block_size(fallback):
        return "F16"  # "must use F16 due to unusual shape"
    return fallback


def llama_cpp_tensor_type(gguf_name: str, shape: tuple[int, ...], file_type: str, ctx: MixtureContext, layer: int | None, source_type: str = "F32") -> str:
    """The ggml type llama.cpp's quantizer gives one tensor (llama_tensor_get_type, dense models).

    `shape` is PyTorch order (rows, cols); `layer` the decoder layer. For dense models llama.cpp's
    counters i_attention_wv and i_ffn_down equal the layer index, since it visits tensors sorted by layer.
    `source_type` is the tensor's type in the input file, kept by tensors that are never quantized.
    """
    ft = FILE_TYPES[file_type]
    # tensor_allows_quantization: 2-D "...weight" tensors except norms
    if len(shape) < 2 or not gguf_name.endswith("weight") or "_norm.weight" in gguf_name:
        return source_type
    if ft.base in UNQUANTIZED:
        return ft.base
    cols = shape[-1]
    category = _category(gguf_name)
    new = ft.base
    name = ft.name
    n = ctx.n_layer
    i = layer if layer is not None else 0
    if category == "output" or (ctx.tied_embeddings and category == "token_embd"):
        if cols % _block_size(new):
            new = "Q8_0"
        elif new != "Q8_0":
            new = "Q6_K"
    elif category == "token_embd":
        pass  # only the IQ1/IQ2/IQ3_XXS/TQ file types change it
    elif category in ("attn_v", "attn_qkv"):
        if name == "Q2_K":
            new = "Q4_K" if ctx.n_gqa >= 4 else "Q3_K"
        elif name == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
        elif name in ("IQ4_NL", "IQ4_XS") and ctx.n_gqa >= 4:
            new = "Q5_K"
        elif name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif name == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if ctx.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"  # attn_v is 8x smaller than attn_q on 70B: more bits cost little
    elif category == "ffn_down":
        if name == "Q2_K":
            new = "Q3_K"
        elif name == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
        elif name == "Q4_K_M":
            if _use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and name in ("IQ4_NL", "IQ4_XS") and not ctx.has_imatrix:
            new = "Q5_K"
        elif name == "Q5_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif name == "Q4_K_S" and i < n // 8:
            new = "Q5_K"
        elif name in ("Q4_0", "Q5_0") and ctx.has_imatrix and i < n // 8:
            new = "Q4_1" if name == "Q4_0" else "Q5_1"
    elif category == "attn_output":
        if name == "Q2_K":
            new = "Q3_K"
        elif name == "Q3_K_M":
            new = "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
    return _fallback(new, cols)


# ---------------------------------------------------------------------------------------------------
# llama.cpp's quantizer


def quantize_with_llama_cpp(source: Path, target: Path, file_type: str, imatrix: dict[str, np.ndarray] | None = None, nthread: int | None = None) -> None:
    """llama_model_quantize(source -> target) to `file_type`, with an optional importance matrix.

    `imatrix` maps GGUF tensor names to (cols,) float32 mean squared activations; it reaches the C
    quantizer as llama.h's array of llama_model_imatrix_data {name, data, size}, ended by a NULL name.
    """
    from quantbench.runtimes.llamacpp import cpu_threads, import_llama_cpp, recent_log, route_llama_cpp_logs

    lc = import_llama_cpp()
    route_llama_cpp_logs()
    params = lc.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type].ftype
    params.nthread = nthread or cpu_threads()
    keep_alive = []
    if imatrix:
        entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for k, (name, values) in enumerate(sorted(imatrix.items())):
            v = np.ascontiguousarray(values, dtype=np.float32)
            encoded = name.encode("utf-8")
            keep_alive += [v, encoded]
            entries[k].name = encoded
            entries[k].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[k].size = v.size
        entries[len(imatrix)].name = None
        keep_alive.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_model_imatrix_data))
    recent_log.clear()
    rc = lc.llama_model_quantize(str(source).encode("utf-8"), str(target).encode("utf-8"), ctypes.byref(params))
    if rc != 0:
        tail = "\n".join(list(recent_log)[-8:])
        raise QuantbenchError(f"llama.cpp could not quantize {source.name} to {file_type}:\n{tail}")


def _lossless_writer_type(model_dir: Path) -> str:
    """The writer type that holds the source weights exactly: BF16/F16 for 16-bit checkpoints, else F32."""
    import struct

    dtypes = set()
    for shard in sorted(model_dir.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2}
    if dtypes == {"BF16"}:
        return "BF16"
    if dtypes == {"F16"}:
        return "F16"
    return "F32"


def read_tensor_types(path: Path) -> dict[str, tuple[str, int]]:
    """GGUF tensor name -> (ggml type name, stored bytes), read back with the gguf package's reader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}


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
        tmp = cached.with_name(cached.stem + f".tmp-{os.getpid()}.npz")
        np.savez(tmp, __tokens__=np.array(tokens), **values)
        os.replace(tmp, cached)
    missing = sorted(set(names.values()) - set(values))
    if missing:
        raise QuantbenchError(f"the importance matrix has no data for {missing[0]} (and {len(missing) - 1} more)")
    return values, {"tokens": tokens, "sequences": len(sequences), "tensors": len(values), "cache": str(cached)}


# ---------------------------------------------------------------------------------------------------
# The recipes


class GGUFRecipe(Recipe):
    family = "gguf"
    runtime = "llama.cpp"

    def __init__(self, file_type: GGUFFileType, imatrix: bool = False):
        self.file_type = file_type
        self.imatrix = imatrix
        self.needs_calibration = imatrix
        self.name = "gguf-" + file_type.name.lower() + ("-imat" if imatrix else "")
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

        reason = self.unavailable_reason(job.device)
        if reason and self.file_type.name not in WRITER_TYPES:
            raise QuantbenchError(reason)
        arch = ArchSpec.from_config(job.source.config())
        MixtureContext.from_arch(arch, self.imatrix)  # unsupported architectures fail here, before any work
        out = Path(job.out_dir) / ARTIFACT_FILE
        meta: dict = {"format": "gguf", "file_type": self.file_type.name, "llama_ftype": self.file_type.ftype}
        if self.file_type.name in WRITER_TYPES:
            write_gguf(job.source.path, out, self.file_type.name, model_name=job.source.name)
            meta["writer"] = "quantbench.formats.gguf_writer"
        else:
            intermediate_type = _lossless_writer_type(job.source.path)
            intermediate = Path(job.out_dir) / f"intermediate-{intermediate_type.lower()}.gguf"
            try:
                write_gguf(job.source.path, intermediate, intermediate_type, model_name=job.source.name)
                imatrix = None
                if self.imatrix:
                    imatrix, meta["imatrix"] = imatrix_for_job(job, arch)
                tmp = out.with_name(out.name + ".tmp")
                quantize_with_llama_cpp(intermediate, tmp, self.file_type.name, imatrix)
                os.replace(tmp, out)
            finally:
                intermediate.unlink(missing_ok=True)
            meta["writer"] = f"llama.cpp llama_model_quantize from {intermediate_type}"
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

    def plan_tensor(self, tensor, arch) -> TensorPlan:
        ctx = MixtureContext.from_arch(arch, self.imatrix)
        if tensor.gguf_name is None:
            raise QuantbenchError(f"{tensor.name} has no GGUF name")
        if self.file_type.name in WRITER_TYPES:
            type_name = writer_storage_type(tensor.gguf_name, tensor.shape, self.file_type.name)
        else:
            source = writer_storage_type(tensor.gguf_name, tensor.shape, "F32")
            type_name = llama_cpp_tensor_type(tensor.gguf_name, tensor.shape, self.file_type.name, ctx, tensor.layer, source)
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

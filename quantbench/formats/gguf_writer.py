"""HF Llama-family folder -> GGUF file, with the `gguf` package's writer and tensor-name maps.

For Llama, Mistral and Qwen2 (ArchFamily.own_gguf_writer) the GGUF recipes write with this module:
it is bit-exact against the gguf package and llama.cpp (tests), runs in-process and streams one tensor
at a time. Every other architecture goes through llama.cpp's own converter
(formats/upstream_converter.py), which knows every architecture llama.cpp runs.

Bytes only: this module stores the weights as F32, F16, BF16 or Q8_0 (the simple types that llama.cpp's
own converter `convert_hf_to_gguf.py` writes); the K-quant mixtures are produced afterwards by llama.cpp's
quantizer from a lossless file written here in the source's own precision (quantbench.recipes.gguf).
Which architectures convert, their llama.cpp name and whether q/k rows are permuted is data in
quantbench.arch (ArchFamily.gguf_arch, rotary_permute); the type tables are in formats/gguf_types.py.

What the converter does, and therefore what we do (llama.cpp `conversion/base.py`, `conversion/llama.py`):
- tensor names come from `gguf.get_tensor_name_map(arch, n_layers)`;
- 1-D tensors, `*_norm.weight` and everything not ending in `.weight` (biases) stay F32;
- q_proj and k_proj rows are permuted from HF's rotate-half layout into llama.cpp's interleaved-pair
  rotary layout (`permute_for_rotary`) where the architecture record says so (Llama, Mistral);
- tied embeddings: no `output.weight` is written (llama.cpp reuses `token_embd.weight`);
- RoPE type "llama3" adds a `rope_freqs.weight` tensor of per-frequency factors;
- Q8_0 needs rows that are a multiple of 32; a tensor whose row is not falls back to F16.

Tensors are read from the safetensors shards one at a time and written one at a time, so the peak
memory is one tensor, not the model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.artifact import atomic_file
from quantbench.arch import FAMILIES, OWN_WRITER_ARCHITECTURES, ArchSpec, text_config
from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_tokenizer import add_tokenizer
from quantbench.formats.gguf_types import FILE_TYPES, WRITER_TYPES, ggml_tensor_bytes, ggml_type

log = logging.getLogger(__name__)

QK8_0 = 32  # elements per Q8_0 block (ggml-common.h)


def writer_storage_type(gguf_name: str, shape: tuple[int, ...], out_type: str) -> str:
    """The ggml type this writer gives one tensor when asked for `out_type` (convert_hf_to_gguf rules)."""
    if out_type not in WRITER_TYPES:
        raise QuantbenchError(f"GGUF writer type '{out_type}' is not one of {', '.join(WRITER_TYPES)}")
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"
    if out_type == "Q8_0" and shape[-1] % QK8_0:
        return "F16"  # the converter's fallback when a row is not whole Q8_0 blocks
    return out_type


def permute_for_rotary(W: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved rotary rows (convert_hf_to_gguf.py LlamaModel.permute).

    Within each head of `head_dim` rows, HF keeps the first halves of the rotary pairs in rows
    [0, head_dim/2) and the second halves in [head_dim/2, head_dim); llama.cpp wants pair members
    adjacent: row order 0, h/2, 1, h/2+1, ...  W: (n_head * head_dim, cols) or (n_head * head_dim,).
    """
    rows = W.shape[0]
    return W.reshape(n_head, 2, rows // n_head // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def unpermute_for_rotary(W: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_for_rotary`: llama.cpp's interleaved rows back to HF's rotate-half rows."""
    rows = W.shape[0]
    return W.reshape(n_head, rows // n_head // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def rotary_permute_heads(arch: ArchSpec, hf_name: str) -> int | None:
    """How many heads' rows `permute_for_rotary` reorders in this HF tensor; None when stored as is."""
    family = FAMILIES.get(arch.model_type)
    if family is None or not family.rotary_permute:
        return None
    q, k = family.qk_projections
    if hf_name.endswith((q + ".weight", q + ".bias")):
        return arch.num_heads
    if hf_name.endswith((k + ".weight", k + ".bias")):
        return arch.num_kv_heads
    return None


# ---------------------------------------------------------------------------------------------------
# Byte codecs for the simple types


def encode_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 blocks of a float array whose last dim is a multiple of 32, as uint8 (rows, cols/32*34).

    Block layout (ggml-common.h block_q8_0), 34 bytes per 32 elements:

        +--------+----------------------------------+
        | d fp16 | qs: 32 x int8                    |
        +--------+----------------------------------+
          2 B      32 B            value_i = d * qs_i

    The encoding is the reference one of ggml-quants.c quantize_row_q8_0_ref: d = absmax / 127,
    qs = roundf(x * (1/d)) with roundf rounding halves away from zero.
    """
    x = np.asarray(x, dtype=np.float32)
    cols = x.shape[-1]
    if cols % QK8_0:
        raise QuantbenchError(f"Q8_0 needs rows that are a multiple of {QK8_0}, got {cols}")
    blocks = x.reshape(-1, QK8_0)  # (n_blocks, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = blocks * inv_d
    qs = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), qs.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], cols // QK8_0 * (2 + QK8_0))


def encode_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (round to nearest even, as torch and ggml's fp32->bf16 do), as uint16."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def encode_tensor(x: np.ndarray, type_name: str) -> np.ndarray:
    """The bytes (as a numpy array the writer accepts) of `x` stored as `type_name`."""
    if type_name == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if type_name == "F16":
        return np.ascontiguousarray(x, dtype=np.float16)
    if type_name == "BF16":
        return encode_bf16(x)
    if type_name == "Q8_0":
        return encode_q8_0(x)
    raise QuantbenchError(f"the GGUF writer cannot encode type {type_name}; it writes {', '.join(WRITER_TYPES)}")


# ---------------------------------------------------------------------------------------------------
# Hyperparameters


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors for RoPE type "llama3" (Llama 3.1 paper / convert_hf_to_gguf.py)."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_hparams(writer, arch: ArchSpec, file_type: int, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_block_count(arch.num_layers)
    writer.add_context_length(arch.max_position_embeddings)
    writer.add_embedding_length(arch.hidden_size)
    writer.add_feed_forward_length(arch.intermediate_size)
    writer.add_head_count(arch.num_heads)
    writer.add_head_count_kv(arch.num_kv_heads)
    writer.add_layer_norm_rms_eps(arch.rms_norm_eps)
    writer.add_vocab_size(arch.vocab_size)
    writer.add_rope_dimension_count(arch.head_dim)
    if arch.head_dim_in_config:
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    rope = arch.rope
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type = rope["rope_type"]
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif rope_type not in ("default", "llama3"):
        raise QuantbenchError(
            f"RoPE type '{rope_type}' is not supported by quantbench's GGUF writer (default, linear, yarn, llama3); "
            "convert this model with llama.cpp's convert_hf_to_gguf.py and pass the .gguf file"
        )
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------------
# The writer


@dataclass(frozen=True)
class GGUFWriteResult:
    path: Path
    file_bytes: int
    tensor_types: dict  # gguf tensor name -> ggml type name
    tensor_bytes: dict  # gguf tensor name -> stored bytes (without alignment padding)


class _SafetensorsFolder:
    """The source tensors, read one at a time with pread (formats.safetensors_stream): the checkpoint is
    never memory-mapped, so converting holds one tensor (and its fp32 copy), not the file's pages."""

    def __init__(self, model_dir: Path):
        from quantbench.formats.safetensors_stream import CheckpointReader

        self._reader = CheckpointReader(model_dir)

    def keys(self) -> list[str]:
        return self._reader.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._reader.entry(name).shape

    def get(self, name: str) -> np.ndarray:
        import torch

        return self._reader.read(name).to(torch.float32).numpy()


def _hf_to_gguf_name(name_map, hf_name: str) -> str | None:
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def write_gguf(model_dir: Path, out_path: Path, out_type: str = "F16", model_name: str | None = None,
               extra_metadata: dict[str, str] | None = None) -> GGUFWriteResult:
    """Convert the HF folder `model_dir` into the GGUF file `out_path`, weights stored as `out_type`.

    `extra_metadata` adds string key/values (e.g. quantbench.fit.kv_cache_type); llama.cpp's quantizer
    copies every key of its input file into its output.

    The file is written to a temporary name beside `out_path` and renamed when complete.
    """
    import gguf

    model_dir = Path(model_dir)
    out_path = Path(out_path)
    if out_type not in WRITER_TYPES:
        raise QuantbenchError(f"GGUF writer type '{out_type}' is not one of {', '.join(WRITER_TYPES)}")
    config = json.loads((model_dir / "config.json").read_text())
    if text_config(config) is not config:
        raise QuantbenchError(
            f"{model_dir}: multimodal checkpoints are not supported by quantbench's GGUF writer; "
            f"supported model_type values: {', '.join(OWN_WRITER_ARCHITECTURES)}"
        )
    family = FAMILIES.get(config.get("model_type", ""))
    if family is None or not family.own_gguf_writer:
        raise QuantbenchError(
            f"quantbench's own GGUF writer does not support architecture '{config.get('model_type')}'; supported "
            f"model_type values: {', '.join(OWN_WRITER_ARCHITECTURES)}. The GGUF methods convert with llama.cpp's "
            "converter (formats/upstream_converter.py), which does."
        )
    arch = ArchSpec.from_config(config)
    gguf_arch = gguf.MODEL_ARCH[family.gguf_arch]
    arch_name = gguf.MODEL_ARCH_NAMES[gguf_arch]
    name_map = gguf.get_tensor_name_map(gguf_arch, arch.num_layers)

    weights = _SafetensorsFolder(model_dir)
    # (gguf name, loader, shape, ggml type) in checkpoint order; llama.cpp sorts by layer itself.
    plan: list[tuple[str, object, tuple[int, ...], str]] = []
    for hf_name in weights.keys():
        if arch.tie_word_embeddings and hf_name == f"{family.lm_head}.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by every runtime
        gguf_name = _hf_to_gguf_name(name_map, hf_name)
        if gguf_name is None:
            raise QuantbenchError(
                f"{model_dir}: tensor '{hf_name}' has no GGUF name for architecture {arch_name}; "
                "this checkpoint is not a plain Llama-family model"
            )
        shape = weights.shape(hf_name)
        rotary_heads = rotary_permute_heads(arch, hf_name)

        def load(hf_name=hf_name, rotary_heads=rotary_heads):
            W = weights.get(hf_name)
            return permute_for_rotary(W, rotary_heads) if rotary_heads else W

        plan.append((gguf_name, load, shape, writer_storage_type(gguf_name, shape, out_type)))
    if arch.rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(arch.rope, arch.head_dim)
        plan.append(("rope_freqs.weight", lambda f=factors: f, factors.shape, "F32"))

    with atomic_file(out_path) as tmp_path:
        writer = gguf.GGUFWriter(tmp_path, arch_name)
        try:
            _add_hparams(writer, arch, FILE_TYPES[out_type].ftype, model_name or model_dir.name)
            add_tokenizer(writer, model_dir, arch.vocab_size)
            for key, value in (extra_metadata or {}).items():
                writer.add_string(key, str(value))
            tensor_types, tensor_bytes = {}, {}
            for gguf_name, _, shape, type_name in plan:
                nbytes = ggml_tensor_bytes(type_name, shape)
                # `shape` is the element shape in PyTorch order; the writer reverses it into ggml's ne[].
                # (A non-uint8 dtype tells add_tensor_info that the shape counts elements, not bytes.)
                writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type(type_name))
                tensor_types[gguf_name] = type_name
                tensor_bytes[gguf_name] = nbytes
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for gguf_name, load, shape, type_name in plan:
                data = encode_tensor(load(), type_name)
                writer.write_tensor_data(data.reshape(-1).view(np.uint8))
        finally:
            writer.close()
    return GGUFWriteResult(out_path, out_path.stat().st_size, tensor_types, tensor_bytes)

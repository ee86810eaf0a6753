"""Read an artifact's tensors exactly as stored: which family wrote it, and each linear still packed.

The fast runtime never dequantizes a whole model. This module only collects, per linear, the stored
tensors of its format into one small record (a `Packed*` below); `linears.py` turns each record into
something that multiplies. The same reader takes a folder of safetensors (what `quantize` writes) or
a name -> tensor mapping holding the same keys (what the synthetic bench hands over after packing random
weights with the recipe's own format code), so both go through one loader.

Families and their stored keys, per linear module `<m>` (rows, cols):

    float                 <m>.weight (rows, cols) in the artifact dtype
    compressed-tensors    <m>.weight_packed int32, <m>.weight_scale, <m>.weight_zero_point int32,
                          <m>.weight_shape   (layout: quantbench/formats/compressed_tensors.py)
    bitsandbytes 4-bit    <m>.weight uint8 (ceil(n/2), 1) two codes a byte, first in the HIGH nibble;
                          <m>.weight.absmax fp32 (n/64,) or, with double quant, uint8 codes plus
                          <m>.weight.nested_absmax fp32, <m>.weight.nested_quant_map fp32 (256,);
                          <m>.weight.quant_map fp32 (16,); <m>.weight.quant_state.bitsandbytes__<type>
                          the JSON {quant_type, blocksize, dtype, shape, nested_blocksize, nested_offset}
    bitsandbytes int8     <m>.weight int8 (rows, cols), <m>.SCB fp32 (rows,): W = weight * SCB / 127
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from quantbench.arch import LINEAR, ArchSpec
from quantbench.errors import QuantbenchError

# The architectures this runtime's decoder implements (pre-norm Llama layout, rotary, GQA, SwiGLU).
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")
TRANSFORMERS_HINT = "use --runtime transformers"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def unsupported(what: str) -> QuantbenchError:
    """The one error for anything this runtime cannot run: it names the runtime that can."""
    return QuantbenchError(f"the quantbench runtime cannot run {what}; {TRANSFORMERS_HINT}")


# ---------------------------------------------------------------------------------------------------
# Per-format records of one linear, as stored


@dataclass(frozen=True)
class PackedDense:
    weight: torch.Tensor  # (rows, cols)
    storage: str = "dense"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)


@dataclass(frozen=True)
class PackedIntGrid:
    """compressed-tensors pack-quantized: W = scale * (q - zero), groups of `group_size` along cols."""

    weight_packed: torch.Tensor  # int32 (rows, ceil(cols*bits/32)), dense bit stream, LSB first
    weight_scale: torch.Tensor  # (rows, groups) fp16/bf16
    weight_zero_point: torch.Tensor  # int32 (ceil(rows*bits/32), groups), packed down the rows
    bits: int
    group_size: int
    rows: int
    cols: int
    storage: str = "int-grid"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)


@dataclass(frozen=True)
class PackedBnb4bit:
    """bitsandbytes NF4/FP4: W.flatten()[i] = quant_map[code_i] * absmax[i // blocksize]."""

    codes: torch.Tensor  # uint8 (ceil(n/2),): element 2j in the high nibble, 2j+1 in the low
    absmax: torch.Tensor  # fp32 (blocks,) or, double quant, uint8 (blocks,) codes into nested_quant_map
    quant_map: torch.Tensor  # fp32 (16,)
    quant_type: str  # "nf4" or "fp4"
    blocksize: int
    rows: int
    cols: int
    nested_absmax: torch.Tensor | None = None  # fp32 (ceil(blocks/nested_blocksize),)
    nested_quant_map: torch.Tensor | None = None  # fp32 (256,) signed dynamic map
    nested_blocksize: int = 0
    nested_offset: float = 0.0  # mean of the absmax values, added back after the nested lookup
    storage: str = "bnb-4bit"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None


@dataclass(frozen=True)
class PackedInt8Rows:
    """bitsandbytes LLM.int8 storage: int8 weight with one fp32 absmax per row (SCB)."""

    weight: torch.Tensor  # int8 (rows, cols)
    SCB: torch.Tensor  # fp32 (rows,)
    threshold: float  # LLM.int8 outlier threshold from the artifact's config (0: none)
    storage: str = "bnb-int8"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)


# ---------------------------------------------------------------------------------------------------
# Where the tensors come from


class TensorSource:
    """Stored tensors by name: safetensors files of a folder, or an in-memory mapping with the same keys."""

    def __init__(self, folder: Path | None = None, tensors: Mapping[str, torch.Tensor] | None = None):
        self._tensors = tensors
        self._where: dict[str, Path] = {}
        if folder is not None:
            from safetensors import safe_open

            shards = sorted(folder.glob("*.safetensors"))
            if not shards:
                raise QuantbenchError(f"{folder}: no *.safetensors weights")
            for shard in shards:
                with safe_open(str(shard), "pt") as f:
                    for key in f.keys():
                        self._where[key] = shard
        self._open: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return list(self._tensors.keys()) if self._tensors is not None else list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in (self._tensors if self._tensors is not None else self._where)

    def total_bytes(self) -> int:
        """Bytes of every stored tensor (from the safetensors headers: nothing is read)."""
        if self._tensors is not None:
            return sum(t.nbytes for t in self._tensors.values())
        total = 0
        for shard in set(self._where.values()):
            with open(shard, "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
        return total

    def get(self, name: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[name]
        if name not in self._where:
            raise QuantbenchError(f"the artifact has no tensor {name}: incomplete or not written by this format")
        shard = self._where[name]
        if shard not in self._open:
            from safetensors import safe_open

            self._open[shard] = safe_open(str(shard), "pt")
        return self._open[shard].get_tensor(name)


# ---------------------------------------------------------------------------------------------------
# Which family, from the config alone


@dataclass(frozen=True)
class ArtifactKind:
    family: str  # "float", "compressed-tensors", "bitsandbytes-4bit", "bitsandbytes-8bit"
    dtype: torch.dtype  # the artifact's own dtype for unquantized tensors (and bnb's compute dtype)
    bits: int = 16
    group_size: int = 0
    int8_threshold: float = 0.0


def artifact_kind(config: dict) -> ArtifactKind:
    """The stored family of an HF-style folder's config.json; a clear error for anything else."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_ARCHS:
        raise unsupported(f"architecture '{model_type}' (it runs {', '.join(SUPPORTED_ARCHS)})")
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype_name not in _DTYPES:
        raise unsupported(f"dtype '{dtype_name}'")
    dtype = _DTYPES[dtype_name]
    q = config.get("quantization_config")
    if not q:
        return ArtifactKind("float", dtype)
    method = q.get("quant_method")
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        if q.get("format") != "pack-quantized" or len(groups) != 1:
            raise unsupported(f"compressed-tensors format '{q.get('format')}' with {len(groups)} groups (it runs pack-quantized, one group)")
        w = next(iter(groups.values()))["weights"]
        if w.get("type") != "int" or w.get("strategy") != "group" or w.get("symmetric") or w.get("actorder"):
            raise unsupported(f"compressed-tensors weights {w} (it runs asymmetric int group-wise, no act-order)")
        return ArtifactKind("compressed-tensors", dtype, bits=int(w["num_bits"]), group_size=int(w["group_size"]))
    if method == "bitsandbytes":
        if q.get("load_in_4bit"):
            return ArtifactKind("bitsandbytes-4bit", _DTYPES.get(q.get("bnb_4bit_compute_dtype"), dtype), bits=4)
        if q.get("load_in_8bit"):
            return ArtifactKind("bitsandbytes-8bit", dtype, bits=8, int8_threshold=float(q.get("llm_int8_threshold", 6.0)))
    raise unsupported(f"quantization method '{method}'")


# ---------------------------------------------------------------------------------------------------
# Reading one linear


def read_linear(source: TensorSource, module: str, kind: ArtifactKind) -> PackedDense | PackedIntGrid | PackedBnb4bit | PackedInt8Rows:
    """The stored tensors of linear `module` (e.g. "model.layers.0.self_attn.q_proj"), still packed."""
    if kind.family == "float":
        return PackedDense(source.get(f"{module}.weight"))
    if kind.family == "compressed-tensors":
        if f"{module}.weight_packed" not in source:  # listed in `ignore`: stored dense
            return PackedDense(source.get(f"{module}.weight"))
        rows, cols = (int(x) for x in source.get(f"{module}.weight_shape"))
        return PackedIntGrid(source.get(f"{module}.weight_packed"), source.get(f"{module}.weight_scale"),
                             source.get(f"{module}.weight_zero_point"), kind.bits, kind.group_size, rows, cols)
    if kind.family == "bitsandbytes-8bit":
        if f"{module}.SCB" not in source:  # not quantized (lm_head): stored dense
            return PackedDense(source.get(f"{module}.weight"))
        return PackedInt8Rows(source.get(f"{module}.weight"), source.get(f"{module}.SCB").float(), kind.int8_threshold)
    if kind.family == "bitsandbytes-4bit":
        return _read_bnb4bit(source, module)
    raise unsupported(f"family {kind.family}")


def _read_bnb4bit(source: TensorSource, module: str) -> PackedBnb4bit | PackedDense:
    prefix = f"{module}.weight.quant_state.bitsandbytes__"
    state_key = next((k for k in (prefix + "nf4", prefix + "fp4") if k in source), None)
    if state_key is None:  # not quantized (bitsandbytes skips some modules): stored dense
        return PackedDense(source.get(f"{module}.weight"))
    state = json.loads(bytes(source.get(state_key).tolist()).decode("utf-8"))
    rows, cols = state["shape"]
    absmax = source.get(f"{module}.weight.absmax")
    if absmax.dtype not in (torch.float32, torch.uint8):
        raise unsupported(f"{module}: bitsandbytes absmax stored as {absmax.dtype} (its CPU-repacked layout)")
    nested = "nested_blocksize" in state
    return PackedBnb4bit(
        codes=source.get(f"{module}.weight").reshape(-1),
        absmax=absmax,
        quant_map=source.get(f"{module}.weight.quant_map").float(),
        quant_type=state["quant_type"],
        blocksize=int(state["blocksize"]),
        rows=int(rows),
        cols=int(cols),
        nested_absmax=source.get(f"{module}.weight.nested_absmax").float() if nested else None,
        nested_quant_map=source.get(f"{module}.weight.nested_quant_map").float() if nested else None,
        nested_blocksize=int(state.get("nested_blocksize", 0)),
        nested_offset=float(state.get("nested_offset", 0.0)),
    )


def linear_modules(arch: ArchSpec) -> list[str]:
    """Module names of every decoder linear, in checkpoint order (from the arch record)."""
    return [t.name.removesuffix(".weight") for t in arch.tensors() if t.role == LINEAR]


def stored_nbytes(packed) -> int:
    """Bytes of the tensors one record holds (what the device keeps for that linear)."""
    return sum(t.numel() * t.element_size() for t in vars(packed).values() if isinstance(t, torch.Tensor))


def move(packed, device: torch.device):
    """The same record with every tensor on `device` (non-blocking from pinned memory is not needed here)."""
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(packed).items()}
    return type(packed)(**fields)


def load_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise QuantbenchError(f"{folder}: no config.json")
    return json.loads(path.read_text())

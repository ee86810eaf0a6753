"""Read an artifact's tensors exactly as stored: which family wrote it, and each linear still packed.

The fast runtime never dequantizes a whole model. This module only collects, per linear, the stored
tensors of its format into the weight class of `quantbench.kernels` for that format (no repacking);
`linears.py` pairs each with a kernel. The same reader takes a folder of safetensors (what `quantize` writes) or
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
import torch

from quantbench.errors import QuantbenchError

# The architectures this runtime's decoder implements (pre-norm Llama layout, rotary, GQA, SwiGLU).
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")
TRANSFORMERS_HINT = "use --runtime transformers"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def unsupported(what: str) -> QuantbenchError:
    """The one error for anything this runtime cannot run: it names the runtime that can."""
    return QuantbenchError(f"the quantbench runtime cannot run {what}; {TRANSFORMERS_HINT}")


# ---------------------------------------------------------------------------------------------------
# Where the tensors come from


class TensorSource:
    """Stored tensors by name: safetensors files of a folder, or an in-memory mapping with the same keys."""

    def __init__(self, folder: Path | None = None, tensors: dict[str, torch.Tensor] | None = None, consume: bool = False):
        """consume=True: each tensor is taken out of `tensors` as it is read, so a caller that hands over
        its packed tensors holds no second reference to what the runtime keeps or transforms."""
        self._tensors = tensors
        self._consume = consume
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
        from quantbench.formats.safetensors import tensor_bytes

        if self._tensors is not None:
            return sum(t.nbytes for t in self._tensors.values())
        return sum(sum(tensor_bytes(shard).values()) for shard in set(self._where.values()))

    def get(self, name: str) -> torch.Tensor:
        if self._tensors is not None:
            if name not in self._tensors:
                raise QuantbenchError(f"no tensor {name} among the tensors handed over")
            return self._tensors.pop(name) if self._consume else self._tensors[name]
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
# Reading one linear, into the weight classes of quantbench.kernels (their docstrings draw the layouts)


def read_linear(source: TensorSource, module: str, kind: ArtifactKind):
    """The stored tensors of linear `module` (e.g. "model.layers.0.self_attn.q_proj"), still packed:
    a plain tensor (dense), or a kernels.IntGroupWeight / Bnb4bitWeight / BnbInt8Weight."""
    from quantbench import kernels

    if kind.family == "float":
        return source.get(f"{module}.weight")
    if kind.family == "compressed-tensors":
        if f"{module}.weight_packed" not in source:  # listed in `ignore` (lm_head): stored dense
            return source.get(f"{module}.weight")
        suffixes = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
        return kernels.IntGroupWeight.from_stored({s: source.get(f"{module}.{s}") for s in suffixes}, kind.bits, kind.group_size)
    if kind.family == "bitsandbytes-8bit":
        if f"{module}.SCB" not in source:  # not quantized (lm_head): stored dense
            return source.get(f"{module}.weight")
        return kernels.BnbInt8Weight(source.get(f"{module}.weight"), source.get(f"{module}.SCB").float(), kind.int8_threshold)
    if kind.family == "bitsandbytes-4bit":
        return _read_bnb4bit(source, module)
    raise unsupported(f"family {kind.family}")


def _read_bnb4bit(source: TensorSource, module: str):
    from quantbench import kernels

    prefix = f"{module}.weight.quant_state.bitsandbytes__"
    state_key = next((k for k in (prefix + "nf4", prefix + "fp4") if k in source), None)
    if state_key is None:  # not quantized (lm_head): stored dense
        return source.get(f"{module}.weight")
    state = json.loads(bytes(source.get(state_key).tolist()).decode("utf-8"))
    rows, cols = state["shape"]
    absmax = source.get(f"{module}.weight.absmax")
    if absmax.dtype not in (torch.float32, torch.uint8):
        raise unsupported(f"{module}: bitsandbytes absmax stored as {absmax.dtype} (its CPU-repacked layout)")
    nested = "nested_blocksize" in state
    return kernels.Bnb4bitWeight(
        packed=source.get(f"{module}.weight").reshape(-1),
        absmax=absmax,
        code=source.get(f"{module}.weight.quant_map").float(),
        rows=int(rows),
        cols=int(cols),
        quant_type=state["quant_type"],
        blocksize=int(state["blocksize"]),
        nested_absmax=source.get(f"{module}.weight.nested_absmax").float() if nested else None,
        nested_code=source.get(f"{module}.weight.nested_quant_map").float() if nested else None,
        nested_offset=torch.tensor(float(state["nested_offset"]), dtype=torch.float32) if nested else None,
        nested_blocksize=int(state.get("nested_blocksize", 256)),
    )


def weight_format(weight) -> str:
    """The kernels registry's name for a weight read by read_linear."""
    from quantbench import kernels

    if isinstance(weight, torch.Tensor):
        return kernels.DENSE
    return {kernels.IntGroupWeight: kernels.INT_GROUP, kernels.Bnb4bitWeight: kernels.BNB_4BIT,
            kernels.BnbInt8Weight: kernels.BNB_INT8}[type(weight)]


def stored_nbytes(weight) -> int:
    if isinstance(weight, torch.Tensor):
        return weight.nbytes
    return weight.stored_bytes()


def move(weight, device: torch.device, dense_dtype: torch.dtype):
    """The same weight with every tensor on `device` (a dense weight also cast to the compute dtype)."""
    import dataclasses

    if isinstance(weight, torch.Tensor):
        return weight.to(device=device, dtype=dense_dtype)
    fields = {f.name: getattr(weight, f.name) for f in dataclasses.fields(weight)}
    return type(weight)(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})


def load_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise QuantbenchError(f"{folder}: no config.json")
    return json.loads(path.read_text())

"""Bytes only: integer-grid linears in the compressed-tensors "pack-quantized" safetensors layout.

The layout written by llm-compressor (compressed-tensors 0.20, `PackedQuantizationCompressor`), which
plain transformers reloads (with the `compressed-tensors` package installed) and vLLM serves. For a
linear `<m>` of weight shape (rows, cols), asymmetric grid of `bits` bits, `groups = cols / group_size`:

    <m>.weight_packed      int32 (rows, ceil(cols*bits/32))   codes q in [0, 2^bits), dense bit stream
    <m>.weight_scale       fp16  (rows, groups)
    <m>.weight_zero_point  int32 (ceil(rows*bits/32), groups)  zero points, packed down the ROWS
    <m>.weight_shape       int64 (2,)                          [rows, cols]

Dequantized weight: scale * (q - zero). compressed-tensors names the stored values signed
(q - 2^(bits-1)); packing adds 2^(bits-1) back, so the stored bits are exactly our unsigned codes.

Bit stream of one row (pack along the last dim): element i occupies bits i*bits .. i*bits+bits-1 of
the row, counting from bit 0 of word 0, least significant bit first; an element may straddle two
words when 32 % bits != 0 (3-bit). For 4 bits, one int32 word:

    bit:  31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
          q[7]   q[6]   q[5]   q[4]   q[3]   q[2]   q[1]   q[0]

The format has no ragged groups and no g_idx (removed from compressed-tensors), and transformers'
dequantizing loader applies ONE scheme to every dense linear, so one group size must divide the
`cols` of every quantized linear: `model_group_size` picks it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from quantbench.errors import QuantbenchError

FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"
# pack_int32 works on slices of rows holding about this many int64 values (bits, in the general case).
PACK_SLICE_VALUES = 1 << 21
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


class IntGridWeight(Protocol):
    """What gets packed (quantbench.methods.rtn.QuantizedLinear has these fields)."""

    codes: torch.Tensor  # (rows, cols) integer codes in [0, 2^bits)
    scales: torch.Tensor  # (rows, groups)
    zeros: torch.Tensor  # (rows, groups) integer zero points in [0, 2^bits)
    bits: int
    group_size: int
    g_idx: torch.Tensor | None


def model_group_size(requested: int, linear_cols: list[int]) -> int:
    """The largest of requested, requested/2, ... (>= 8) dividing every linear's cols."""
    size = requested
    while size >= 8:
        if all(cols % size == 0 for cols in linear_cols):
            return size
        if size % 2:
            break
        size //= 2
    raise QuantbenchError(
        f"group size {requested}: no group size of the form {requested}/2^k divides every linear's input width "
        f"({sorted(set(linear_cols))}); compressed-tensors needs one that does. Choose another group size."
    )


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, n) integers in [0, 2^bits) -> (rows, ceil(n*bits/32)) int32, the dense bit stream above."""
    rows, n = values.shape
    words = -(-n * bits // 32)
    out = torch.empty(rows, words, dtype=torch.int32, device=values.device)
    if 32 % bits == 0:  # no element straddles a word: word w holds elements w*per .. w*per+per-1
        per = 32 // bits
        shifts = torch.arange(per, device=values.device, dtype=torch.int64) * bits
        step = max(1, PACK_SLICE_VALUES // max(1, n))
        for r0 in range(0, rows, step):
            v = values[r0 : r0 + step].to(torch.int64)
            if words * per != n:
                v = torch.nn.functional.pad(v, (0, words * per - n))
            v = v.reshape(v.shape[0], words, per)
            v <<= shifts  # in place: one int64 copy of the slice is all the scratch (streaming/budget.py)
            unsigned = v.sum(dim=-1)  # in [0, 2^32)
            del v
            out[r0 : r0 + step] = (unsigned - (unsigned >= 2**31).to(torch.int64) * 2**32).to(torch.int32)
        return out
    shifts_in = torch.arange(bits, device=values.device, dtype=torch.int32)
    shifts_out = torch.arange(32, device=values.device, dtype=torch.int64)
    step = max(1, PACK_SLICE_VALUES // max(1, n * bits))  # rows per slice: bounded int64 scratch
    for r0 in range(0, rows, step):
        v = values[r0 : r0 + step].to(torch.int32)
        stream = ((v[:, :, None] >> shifts_in) & 1).reshape(v.shape[0], n * bits)  # one bit per entry
        stream = torch.nn.functional.pad(stream, (0, words * 32 - n * bits)).reshape(v.shape[0], words, 32)
        unsigned = (stream.to(torch.int64) << shifts_out).sum(dim=-1)  # in [0, 2^32)
        out[r0 : r0 + step] = (unsigned - (unsigned >= 2**31).to(torch.int64) * 2**32).to(torch.int32)
    return out


def unpack_int32(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_int32: (rows, words) int32 -> (rows, n) uint8."""
    rows, words = packed.shape
    shifts = torch.arange(32, device=packed.device, dtype=torch.int64)
    stream = ((packed.to(torch.int64) & 0xFFFFFFFF)[:, :, None] >> shifts) & 1  # (rows, words, 32)
    stream = stream.reshape(rows, words * 32)[:, : n * bits].reshape(rows, n, bits)
    weights = 2 ** torch.arange(bits, device=packed.device, dtype=torch.int64)
    return (stream * weights).sum(dim=-1).to(torch.uint8)


def linear_bytes(rows: int, cols: int, bits: int, group_size: int, scale_bytes: int = 2) -> int:
    """Stored bytes of one packed linear: the four tensors in the module docstring."""
    groups = cols // group_size
    packed = rows * (-(-cols * bits // 32)) * 4
    scale = rows * groups * scale_bytes
    zero_point = (-(-rows * bits // 32)) * groups * 4
    shape = 2 * 8
    return packed + scale + zero_point + shape


def encode_linear(weight: IntGridWeight) -> dict[str, torch.Tensor]:
    """Suffix -> tensor for one module (the four entries of the table above)."""
    rows, cols = weight.codes.shape
    if weight.g_idx is not None:
        raise QuantbenchError(
            "compressed-tensors stores no g_idx: quantize with natural or static groups (GPTQ act_order with static_groups=True)"
        )
    if cols % weight.group_size or weight.scales.shape != (rows, cols // weight.group_size):
        raise QuantbenchError(f"group size {weight.group_size} does not tile {cols} columns; compressed-tensors has no ragged groups")
    return {  # on the weight's own device (the writer moves them to the CPU)
        "weight_packed": pack_int32(weight.codes, weight.bits),
        "weight_scale": weight.scales.contiguous(),
        "weight_zero_point": pack_int32(weight.zeros.T, weight.bits).T.contiguous(),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64, device=weight.codes.device),
    }


def decode_linear(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    """Dequantized (rows, cols) float32 weight from the four tensors of one module."""
    rows, cols = (int(x) for x in tensors["weight_shape"])
    codes = unpack_int32(tensors["weight_packed"], bits, cols).float()  # (rows, cols)
    zeros = unpack_int32(tensors["weight_zero_point"].T.contiguous(), bits, rows).T.float()  # (rows, groups)
    scales = tensors["weight_scale"].float()  # (rows, groups)
    return (codes - zeros.repeat_interleave(group_size, dim=1)) * scales.repeat_interleave(group_size, dim=1)


def quantization_config(bits: int, group_size: int, scale_dtype: torch.dtype, ignore: list[str]) -> dict:
    """The `quantization_config` entry of config.json, as compressed-tensors 0.20 writes it, plus
    `dequantize: true`: transformers 5.24's compressed-module loading path shapes packed zero points
    wrongly (it expects (rows, groups)) and fails on every asymmetric pack-quantized checkpoint; its
    dequantize-at-load path reads them correctly. vLLM reads only the compressed-tensors keys."""
    from compressed_tensors import __version__ as ct_version

    weights = {
        "num_bits": bits,
        "type": "int",
        "symmetric": False,
        "group_size": group_size,
        "strategy": "group",
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "scale_dtype": f"torch.{_DTYPE_NAMES[scale_dtype]}",
        "zp_dtype": "torch.int8",
    }
    return {
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None, "format": FORMAT}
        },
        "format": FORMAT,
        "global_compression_ratio": None,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "quant_method": QUANT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": ct_version,
        "dequantize": True,
    }


@dataclass(frozen=True)
class WrittenCheckpoint:
    weights_file: Path
    tensor_bytes: dict[str, int]  # per stored tensor name


def write_checkpoint(
    out_dir: Path,
    hf_config: dict,
    dense: dict[str, torch.Tensor],
    linears: dict[str, IntGridWeight],
    dtype: torch.dtype,
    ignore: list[str],
) -> WrittenCheckpoint:
    """Write config.json and model.safetensors into out_dir (each to a temp name, then renamed).

    dense: unquantized tensors by state-dict name, cast to `dtype`; linears: module name -> weight.
    """
    from safetensors.torch import save_file

    if not linears:
        raise QuantbenchError("nothing to pack: no quantized linears")
    bits = {w.bits for w in linears.values()}
    sizes = {w.group_size for w in linears.values()}
    scale_dtypes = {w.scales.dtype for w in linears.values()}
    if len(bits) != 1 or len(sizes) != 1 or len(scale_dtypes) != 1:
        raise QuantbenchError("compressed-tensors loading in transformers takes one bit width, group size and scale dtype per model")
    tensors: dict[str, torch.Tensor] = {name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous() for name, t in dense.items()}
    for module, weight in linears.items():
        for suffix, t in encode_linear(weight).items():
            tensors[f"{module}.{suffix}"] = t.cpu()
    config = dict(hf_config)
    config["quantization_config"] = quantization_config(bits.pop(), sizes.pop(), scale_dtypes.pop(), ignore)
    config["dtype"] = _DTYPE_NAMES[dtype]
    config.pop("torch_dtype", None)

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file = out_dir / WEIGHTS_FILE
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights_file)
    tmp_config = out_dir / "config.json.tmp"
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp_config, out_dir / "config.json")
    return WrittenCheckpoint(weights_file, {name: t.numel() * t.element_size() for name, t in tensors.items()})


def read_linears(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Module name -> dequantized float32 weight, read back with our own decoder; and the config."""
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    weights = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    out: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        for key in f.keys():
            module, _, suffix = key.rpartition(".")
            if suffix.startswith("weight_"):
                out.setdefault(module, {})[suffix] = f.get_tensor(key)
    return {m: decode_linear(t, weights["num_bits"], weights["group_size"]) for m, t in out.items()}, config

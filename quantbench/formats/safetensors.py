"""Bytes only: the safetensors header, read and checked in one place.

A safetensors file (huggingface/safetensors, docs "Format"):

    | u64 little-endian N | N bytes of JSON header | data region ............................ |
    header: {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [rows, cols],
             "data_offsets": [begin, end]}, ...}   offsets are relative to the data region's start

Every quantbench reader of a header goes through `read_header`, so a garbled or truncated file gives
one clear QuantbenchError, never a bare ValueError from deep inside a recipe.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from quantbench.errors import QuantbenchError

# Bits per element of every safetensors dtype (the `Dtype` enum of the safetensors crate).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16,
    "U32": 32, "I32": 32, "F32": 32,
    "U64": 64, "I64": 64, "F64": 64, "C64": 64,
}
# The same dtypes as torch and config.json spell them ("torch_dtype": "bfloat16").
_TORCH_SPELLING = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int16": "I16", "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "int32": "I32", "float32": "F32", "float": "F32", "int64": "I64", "float64": "F64", "double": "F64",
}


def dtype_bytes(name: str) -> int:
    """Bytes per element for a safetensors ("BF16"), torch ("torch.bfloat16") or config ("bfloat16") dtype name."""
    key = str(name).removeprefix("torch.")
    key = _TORCH_SPELLING.get(key, key)
    if DTYPE_BITS.get(key, 0) % 8:
        raise QuantbenchError(f"dtype '{name}' is not a whole number of bytes; expected one of {', '.join(DTYPE_BITS)} or a torch dtype name")
    return DTYPE_BITS[key] // 8


def read_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} for every tensor ("__metadata__" left out).

    Checks the header length, the JSON, each entry's fields, that each tensor's span is its dtype x
    shape, and that the data region the header promises is on disk (a truncated download fails here,
    not in the middle of a load)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len == 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} does not fit in a {size}-byte file")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = 0
        for name, info in tensors.items():
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPE_BITS:
                raise ValueError(f"{name}: unknown dtype {dtype!r}")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError(f"{name}: bad shape {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                    and 0 <= offsets[0] <= offsets[1]):
                raise ValueError(f"{name}: bad data_offsets {offsets!r}")
            if offsets[1] - offsets[0] != math.ceil(math.prod(shape) * DTYPE_BITS[dtype] / 8):
                raise ValueError(f"{name}: data_offsets span {offsets[1] - offsets[0]} bytes, not {dtype} x {shape}")
            end = max(end, offsets[1])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else exc
        raise QuantbenchError(f"{path}: corrupt safetensors header ({detail}); re-download or re-export the file") from None
    if 8 + header_len + end > size:
        raise QuantbenchError(
            f"{path}: truncated safetensors file ({size} bytes, its header promises {8 + header_len + end}); re-download it"
        )
    return tensors


def tensor_bytes(path: Path) -> dict[str, int]:
    """Stored bytes of every tensor in one file, from its data offsets."""
    return {name: info["data_offsets"][1] - info["data_offsets"][0] for name, info in read_header(path).items()}


def data_start(path: Path) -> int:
    """Absolute file offset of the data region (8 + N): add it to a tensor's data_offsets to pread it."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return 8 + header_len

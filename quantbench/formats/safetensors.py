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
import struct
from pathlib import Path

from quantbench.errors import QuantbenchError

# Bytes per element of each safetensors dtype (the `Dtype` enum of the safetensors crate).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
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
    if key not in DTYPE_BYTES:
        raise QuantbenchError(f"unknown dtype '{name}'; expected one of {', '.join(DTYPE_BYTES)} or a torch dtype name")
    return DTYPE_BYTES[key]


def read_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} for every tensor ("__metadata__" left out).

    Checks the header length, the JSON, each entry's fields, and that the data region the header
    promises is on disk (a truncated download fails here, not in the middle of a load)."""
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
            begin, stop = info["data_offsets"]
            if info["dtype"] not in DTYPE_BYTES or not 0 <= begin <= stop or not isinstance(info["shape"], list):
                raise ValueError(f"bad entry for {name}: {info}")
            end = max(end, stop)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise QuantbenchError(f"{path}: corrupt safetensors header ({exc}); re-download or re-export the file") from None
    if 8 + header_len + end > size:
        raise QuantbenchError(
            f"{path}: truncated safetensors file ({size} bytes, its header promises {8 + header_len + end}); re-download it"
        )
    return tensors


def tensor_bytes(path: Path) -> dict[str, int]:
    """Stored bytes of every tensor in one file, from its data offsets."""
    return {name: info["data_offsets"][1] - info["data_offsets"][0] for name, info in read_header(path).items()}

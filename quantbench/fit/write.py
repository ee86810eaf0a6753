"""Write a fitted plan through llama.cpp's own quantizer, and check that it wrote exactly the plan.

Every quantizable tensor is pinned to its planned type with an anchored override (`^blk\\.1\\.attn_v\\.weight$`),
with the same importance matrix the sensitivities were measured with. The written file is read back: each
tensor's type and stored bytes must equal the plan, else the file is removed and the error lists them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)


def label_file_type(plan: dict[str, str], plan_bytes: dict[str, int]) -> str:
    """general.file_type is only a label for a mixture: the llama.cpp file type whose base type holds the
    most bytes of the plan, else Q8_0 (it must be a quantized type or llama.cpp ignores the overrides)."""
    from quantbench.formats.gguf_types import FILE_TYPES

    bytes_by_type: dict[str, int] = {}
    for name, type_name in plan.items():
        bytes_by_type[type_name] = bytes_by_type.get(type_name, 0) + plan_bytes[name]
    for type_name, _ in sorted(bytes_by_type.items(), key=lambda kv: -kv[1]):
        for ft in FILE_TYPES.values():
            if ft.base == type_name and ft.base not in ("F32", "F16", "BF16"):
                return ft.name
    return "Q8_0"


def write_plan(intermediate: Path, out: Path, plan: dict[str, str], plan_bytes: dict[str, int],
               imatrix: dict[str, np.ndarray] | None, metadata: dict[str, str] | None = None) -> dict:
    """llama.cpp quantizes `intermediate` into `out` with every tensor in `plan` pinned; verified, atomic.
    `metadata`: string key-values written into `out`'s header by the quantizer (llama.cpp kv_overrides)."""
    from quantbench.formats.gguf_types import read_tensor_types
    from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        quantize_with_llama_cpp(intermediate, tmp, label_file_type(plan, plan_bytes), imatrix, tensor_types=plan, kv=metadata)
        written = read_tensor_types(tmp)
        mismatches = []
        for name, type_name in plan.items():
            got = written.get(name)
            if got is None:
                mismatches.append(f"{name}: planned {type_name}, not in the file")
            elif got != (type_name, plan_bytes[name]):
                mismatches.append(f"{name}: planned {type_name} {plan_bytes[name]} B, written {got[0]} {got[1]} B")
        if mismatches:
            raise QuantbenchError(
                f"llama.cpp wrote {len(mismatches)} tensors differently from the plan, so nothing was written; "
                f"first: {mismatches[0]}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tensor_types": _count(written), "tensor_bytes": sum(b for _, b in written.values()),
            "file_bytes": out.stat().st_size}


def _count(written: dict[str, tuple[str, int]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for type_name, _ in written.values():
        counts[type_name] = counts.get(type_name, 0) + 1
    return counts

"""quantbench's own metadata inside a GGUF file, as GGUF key-values under the `quantbench.` prefix.

A `-o m.gguf` artifact is one GGUF file that llama.cpp opens as it is; `eval` and `compare` read back
where it came from from these keys. They are set while the file is written (llama.cpp's quantizer
takes them as `kv_overrides`; the converter writes them in its own pass), never by rewriting the file.

llama.cpp's override struct holds a string of at most 127 bytes (llama.h llama_model_kv_override,
`char val_str[128]`), so the metadata travels as JSON cut into numbered pieces:

    quantbench.version          "1"                    this layout
    quantbench.method           "gguf-q4_k_m"          readable at a glance (gguf-dump, llama.cpp's log)
    quantbench.json.count       "3"                    number of pieces
    quantbench.json.000 ..      <=127 bytes each       the JSON of the metadata dict, in order
"""

from __future__ import annotations

import json
from pathlib import Path

from quantbench.errors import QuantbenchError

PREFIX = "quantbench."
LAYOUT_VERSION = "1"
MAX_VALUE_BYTES = 127  # llama.h: char val_str[128], NUL-terminated
MAX_PIECES = 1000


def _pieces(text: str) -> list[str]:
    """Cut `text` into pieces of at most MAX_VALUE_BYTES UTF-8 bytes, never inside a character."""
    pieces, current, size = [], [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > MAX_VALUE_BYTES:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    if current:
        pieces.append("".join(current))
    return pieces


def to_kv(meta: dict) -> dict[str, str]:
    """The key-values that carry `meta` (JSON-serialisable) inside a GGUF file."""
    pieces = _pieces(json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str))
    if len(pieces) > MAX_PIECES:
        raise QuantbenchError(f"quantbench metadata is too large for GGUF key-values ({len(pieces)} pieces)")
    kv = {PREFIX + "version": LAYOUT_VERSION, PREFIX + "json.count": str(len(pieces))}
    if isinstance(meta.get("method"), str) and len(meta["method"].encode()) <= MAX_VALUE_BYTES:
        kv[PREFIX + "method"] = meta["method"]
    kv.update({f"{PREFIX}json.{i:03d}": piece for i, piece in enumerate(pieces)})
    return kv


def from_kv(kv: dict[str, str]) -> dict | None:
    """The metadata dict back from the key-values; None when the file has no quantbench keys."""
    if PREFIX + "json.count" not in kv:
        return None
    if kv.get(PREFIX + "version") != LAYOUT_VERSION:
        raise QuantbenchError(f"quantbench metadata layout {kv.get(PREFIX + 'version')} in this GGUF is not "
                              f"{LAYOUT_VERSION}; use the quantbench version that wrote it")
    count = int(kv[PREFIX + "json.count"])
    try:
        return json.loads("".join(kv[f"{PREFIX}json.{i:03d}"] for i in range(count)))
    except (KeyError, ValueError) as exc:
        raise QuantbenchError(f"quantbench metadata in this GGUF is damaged ({exc}); re-quantize") from None


def read_gguf_kv(path: Path, prefix: str = PREFIX) -> dict[str, object]:
    """Every key-value of a GGUF file under `prefix` (the gguf package's reader; tensors are not read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{path}: not a readable GGUF file ({exc})") from None
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith(prefix)}


def read_meta(path: Path) -> dict | None:
    """quantbench's metadata of a GGUF file, or None for a GGUF quantbench did not write."""
    return from_kv({k: v for k, v in read_gguf_kv(path).items() if isinstance(v, str)})

"""llama.cpp's own quantizer (llama_model_quantize), through the same bindings as the runtime.

Used by the GGUF recipe (recipes/gguf.py) and by `fit`'s sensitivity table (fit/sensitivity.py).
Kept beside the runtime (runtimes/llamacpp.py): both load the one library and read its log.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np

from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_types import FILE_TYPES, ggml_type
from quantbench.runtimes.llamacpp import cpu_threads, import_llama_cpp, recent_log, route_llama_cpp_logs

# Bytes of tensor rows llama.cpp's quantizer holds at once (llama_model_quantize_params.max_buf_size):
# its source rows, their fp32 conversion and their quantized output. llama.cpp's default is 8 GiB;
# 1 GiB keeps a 405B model's largest tensor (2.1 G values) inside the host-memory plan
# (streaming/budget.py) and changes no byte of the output: rows are quantized one by one either way.
QUANTIZER_BUFFER_BYTES = 2**30

def quantize_with_llama_cpp(source: Path, target: Path, file_type: str, imatrix: dict[str, np.ndarray] | None = None,
                            nthread: int | None = None, tensor_types: dict[str, str] | None = None,
                            kv: dict[str, str] | None = None, max_buf_size: int = QUANTIZER_BUFFER_BYTES) -> None:
    r"""llama_model_quantize(source -> target) to `file_type`, with an optional importance matrix.

    `imatrix` maps GGUF tensor names to (cols,) float32 mean squared activations; it reaches the C
    quantizer as llama.h's array of llama_model_imatrix_data {name, data, size}, ended by a NULL name.

    `tensor_types` (GGUF tensor name -> ggml type name) pins tensors to types: llama.h's
    llama_model_tensor_override {pattern, type} array, ended by a NULL pattern, with `pure` set so that
    no mixture rule touches them. llama.cpp matches the patterns with std::regex_search, first match wins,
    so each is anchored (`^blk\.1\.attn_v\.weight$`; unanchored, blk.1 would also match blk.10-19).
    The shape fallback still runs afterwards: callers compare the written types with what they asked.

    `kv`: string key-values the quantizer writes into the target's header (llama.h kv_overrides: an
    array of llama_model_kv_override {tag, key[128], val_str[128]} ended by an empty key), so metadata
    is set while the file is written, never by rewriting it.

    `max_buf_size`: at most this many bytes of rows are converted and quantized at once.
    """
    lc = import_llama_cpp()
    route_llama_cpp_logs()
    params = lc.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type].ftype
    params.nthread = nthread or cpu_threads()
    params.max_buf_size = max_buf_size
    keep_alive = []
    if tensor_types:
        overrides = (lc.llama_model_tensor_override * (len(tensor_types) + 1))()
        for k, (name, type_name) in enumerate(tensor_types.items()):
            pattern = ("^" + re.escape(name) + "$").encode("utf-8")
            keep_alive.append(pattern)
            overrides[k].pattern = pattern
            overrides[k].type = ggml_type(type_name).value
        overrides[len(tensor_types)].pattern = None
        keep_alive.append(overrides)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_tensor_override))
        params.pure = True
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
    if kv:
        overrides = (lc.llama_model_kv_override * (len(kv) + 1))()  # zeroed: the last one ends the list
        for k, (key, value) in enumerate(kv.items()):
            key_bytes, value_bytes = key.encode("utf-8"), value.encode("utf-8")
            if len(key_bytes) > 127 or len(value_bytes) > 127:
                raise QuantbenchError(f"GGUF metadata {key!r}: llama.cpp's overrides hold at most 127 bytes")
            overrides[k].tag = lc.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[k].key = key_bytes
            overrides[k].value.val_str = value_bytes
        keep_alive.append(overrides)
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_kv_override))
    recent_log.clear()
    rc = lc.llama_model_quantize(str(source).encode("utf-8"), str(target).encode("utf-8"), ctypes.byref(params))
    if rc != 0:
        tail = "\n".join(list(recent_log)[-8:])
        raise QuantbenchError(f"llama.cpp could not quantize {source.name} to {file_type}:\n{tail}")

"""llama.cpp as a measurement runtime, through llama-cpp-python's bindings of the C API (llama.h).

The C API is used directly (model, context, batch, decode, logits) rather than the high-level
`llama_cpp.Llama` class, so that
- logits come for exactly the token ids given: nothing is tokenized, no BOS is added;
- prefill asks for the last position's logits only, as llama.cpp's own tools do, so its speed is not
  inflated by an output matrix over every prompt token;
- several sequences can be prefilled and decoded together (one KV-cache sequence per batch row).

Works on any .gguf path: one written by quantbench or a user's own file.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_types import ggml_type
from quantbench.runtimes.base import Runtime

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 "
    "(builds llama.cpp from source, about 12 minutes on 2 cores; pip caches the wheel)"
)

_log_callback = None  # the ctypes callback must outlive every call into llama.cpp
# llama.cpp's last log lines above debug level, quoted in error messages (it reports failures only
# through its log).
recent_log: collections.deque[str] = collections.deque(maxlen=400)
# llama.cpp's own report of each backend buffer it allocates ("CUDA0 model buffer size = 15317.02 MiB").
buffer_log: collections.deque[str] = collections.deque(maxlen=64)


KV_CACHE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")  # ggml types llama.cpp can keep K and V in (quantized V: flash attention)
# The KV-cache type a fitted GGUF was budgeted for (written by quantbench fit, read back here).
KV_CACHE_METADATA_KEY = "quantbench.fit.kv_cache_type"
_GGML_LOG_DEBUG, _GGML_LOG_CONT = 1, 5  # ggml.h enum ggml_log_level
_FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}  # llama.h enum llama_flash_attn_type


def import_llama_cpp():
    """The llama_cpp module, or a QuantbenchError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise QuantbenchError(INSTALL_HINT) from None
    return llama_cpp


def gpu_offload_available() -> bool:
    """Whether the installed llama.cpp was built with a GPU backend (CUDA); False when it is not installed."""
    try:
        return bool(import_llama_cpp().llama_supports_gpu_offload())
    except QuantbenchError:
        return False


def route_llama_cpp_logs() -> None:
    """Send llama.cpp's log lines to Python logging (debug level) instead of stderr; once per process."""
    global _log_callback
    llama_cpp = import_llama_cpp()
    if _log_callback is not None:
        return
    native = logging.getLogger("quantbench.llama.cpp")

    last_level = [0]

    @llama_cpp.llama_log_callback
    def _forward(level, text, user_data):
        if level == _GGML_LOG_CONT:
            level = last_level[0]
        last_level[0] = level
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            if "buffer size" in line:
                buffer_log.append(line)
            native.debug(line)
            if level != _GGML_LOG_DEBUG:  # debug lines (a graph dump per context) would crowd the rest out
                recent_log.append(line)

    _log_callback = _forward
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def padded_context(tokens: int) -> int:
    """The context this runtime allocates per sequence: a multiple of 256, at least 512."""
    return max(512, -(-tokens // 256) * 256)


class LlamaCppRuntime(Runtime):
    """One GGUF model in llama.cpp (CPU), with a KV cache sized on demand."""

    name = "llama.cpp"
    dtype = "gguf"
    import_first_on_cuda = "llama_cpp"  # its CUDA build segfaulted at load after numpy/torch (H200 machine)


    @classmethod
    def kv_cache_tokens_per_layer(cls, arch, context):
        """Every layer holds the whole context, padded as _ensure_context pads it."""
        return [padded_context(context)] * arch.num_layers

    @classmethod
    def kv_bytes_per_value(cls, compute_bytes):
        return 2  # the default cache type, F16 (llama-cli's and this runtime's default)

    def __init__(
        self,
        path: Path | str,
        n_threads: int | None = None,
        n_batch: int = 512,
        kv_cache_type: str | None = None,
        flash_attention: str = "auto",
        device: str = "cpu",
    ):
        """Defaults are llama.cpp's own (F16 KV cache, flash attention chosen automatically: on for CPU),
        i.e. what users of llama-cli / llama-server run, unless the file records the KV-cache type it was
        fitted for (`quantbench fit` writes KV_CACHE_METADATA_KEY): then that type, with flash attention on.
        `kv_cache_type="F32", flash_attention="off"` removes llama.cpp's half-precision attention (its CPU
        flash attention rounds Q to F16), for exactness checks against an fp32 reference.

        device="cuda" offloads every layer to the GPU (needs a llama-cpp-python built with GGML_CUDA=on,
        see benchmarks/llamacpp_cuda_build.sh), loading without mmap (mmap + full offload crashed there).
        Such a build must be imported before numpy or torch: `import llama_cpp` first in the process."""
        self._llama = import_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise QuantbenchError(f"{path}: GGUF file not found")
        from quantbench.sources.model import check_gguf

        check_gguf(path)
        route_llama_cpp_logs()
        self.path = path
        self.n_threads = n_threads or cpu_threads()
        self.n_batch = n_batch
        if kv_cache_type is not None and kv_cache_type not in KV_CACHE_TYPES:
            raise QuantbenchError(f"KV cache type '{kv_cache_type}' is not one of {', '.join(KV_CACHE_TYPES)}")
        if flash_attention not in _FLASH_ATTENTION:
            raise QuantbenchError(f"flash_attention must be one of {', '.join(_FLASH_ATTENTION)}, not '{flash_attention}'")
        self.flash_attention = flash_attention
        lc = self._llama
        self.gpu = device.startswith("cuda")
        if self.gpu and not lc.llama_supports_gpu_offload():
            raise QuantbenchError(
                "this llama-cpp-python was built without GPU offload; build it with CUDA "
                "(benchmarks/llamacpp_cuda_build.sh) or use --device cpu"
            )
        self.device = "cuda (llama.cpp, all layers offloaded)" if self.gpu else f"cpu (llama.cpp, {self.n_threads} threads)"
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = -1 if self.gpu else 0  # -1: every layer
        if self.gpu:
            mparams.use_mmap = False
        self._model = lc.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not self._model:
            raise QuantbenchError(
                f"{path}: llama.cpp could not load this GGUF (unsupported architecture or tensor type for "
                "this llama.cpp build, or a damaged file); run with --verbose to see llama.cpp's log"
            )
        recorded = self.metadata(KV_CACHE_METADATA_KEY)
        if kv_cache_type is None and recorded is not None:
            if recorded not in KV_CACHE_TYPES:
                raise QuantbenchError(f"{path}: {KV_CACHE_METADATA_KEY} = '{recorded}' is not a KV-cache type this runtime knows")
            kv_cache_type = recorded
            if recorded != "F16":
                self.flash_attention = "on"  # llama.cpp needs flash attention for a quantized V cache
        self.kv_cache_type = kv_cache_type or "F16"
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self._model)
        self._ctx = None
        self._ctx_tokens = 0  # KV cells per sequence of the current context
        self._ctx_seqs = 0
        self._batch = None
        self._batch_tokens = 0
        self._batch_seqs = 0
        self._pos = 0  # tokens already in each sequence's cache
        self._seqs = 1
        self._last: np.ndarray | None = None  # (seqs, vocab) logits of each sequence's last position

    # -- low-level helpers -------------------------------------------------------------------------

    def _ensure_context(self, tokens_per_seq: int, seqs: int) -> None:
        """A context with room for `tokens_per_seq` cells in each of `seqs` sequences (reused if big enough)."""
        lc = self._llama
        if self._ctx is not None and self._ctx_tokens >= tokens_per_seq and self._ctx_seqs == seqs:
            lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
            return
        if tokens_per_seq > self.n_ctx_train:
            raise QuantbenchError(
                f"{tokens_per_seq} tokens exceed the model's context length ({self.n_ctx_train}); use shorter windows"
            )
        self._free_context()
        per_seq = min(self.n_ctx_train, padded_context(tokens_per_seq))
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = per_seq * seqs
        cparams.n_seq_max = seqs
        cparams.n_batch = max(self.n_batch, seqs)
        cparams.n_ubatch = max(self.n_batch, seqs)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        cparams.type_k = cparams.type_v = ggml_type(self.kv_cache_type).value
        cparams.flash_attn_type = _FLASH_ATTENTION[self.flash_attention]
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise QuantbenchError(
                f"llama.cpp could not create a context of {per_seq * seqs} tokens for {self.path.name} (out of memory?)"
            )
        self._ctx_tokens = lc.llama_n_ctx(self._ctx) // seqs
        self._ctx_seqs = seqs

    def _ensure_batch(self, tokens: int, seqs: int) -> None:
        lc = self._llama
        if self._batch is not None and self._batch_tokens >= tokens and self._batch_seqs >= seqs:
            return
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
        self._batch = lc.llama_batch_init(tokens, 0, seqs)
        self._batch_tokens, self._batch_seqs = tokens, seqs

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants_logits) rows."""
        lc = self._llama
        self._ensure_batch(max(len(rows), self.n_batch), self._ctx_seqs)
        b = self._batch
        b.n_tokens = len(rows)
        for i, (token, pos, seq, want) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise QuantbenchError(f"llama.cpp decode failed (code {rc}) on {self.path.name}")

    def _logits_row(self, i: int) -> np.ndarray:
        ptr = self._llama.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in ids]
        if not ids:
            raise QuantbenchError("no tokens to evaluate")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise QuantbenchError(
                f"token id {bad[0]} is outside this GGUF's vocabulary of {self.n_vocab}: the text was "
                "tokenized for a different model"
            )
        return ids

    # -- Runtime surface ---------------------------------------------------------------------------

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        ids = self._check_ids(ids)
        self._ensure_context(len(ids), 1)
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            self._decode([(t, start + j, 0, True) for j, t in enumerate(chunk)])
            for j in range(len(chunk)):
                out[start + j] = self._logits_row(j)
        self._pos, self._seqs, self._last = len(ids), 1, out[-1:].copy()
        return torch.from_numpy(out)

    def prefill(self, ids: Sequence[int], batch: int = 1, room: int = 256) -> None:
        """Fill a fresh cache with `ids` in each of `batch` sequences; `room` cells stay free for decode."""
        ids = self._check_ids(ids)
        if batch < 1:
            raise QuantbenchError("batch must be at least 1")
        self._ensure_context(len(ids) + room, batch)
        rows_per_call = max(1, self.n_batch // batch) if batch > 1 else self.n_batch
        last = np.empty((batch, self.n_vocab), dtype=np.float32)
        for start in range(0, len(ids), rows_per_call):
            chunk = ids[start : start + rows_per_call]
            final = start + len(chunk) == len(ids)
            rows = [(t, start + j, s, final and j == len(chunk) - 1) for s in range(batch) for j, t in enumerate(chunk)]
            self._decode(rows)
        for s in range(batch):
            last[s] = self._logits_row(s * len(chunk) + len(chunk) - 1)
        self._pos, self._seqs, self._last = len(ids), batch, last

    def decode(self, new_tokens: int) -> None:
        if self._last is None:
            raise QuantbenchError("decode() needs a prefill() first")
        if self._pos + new_tokens > self._ctx_tokens:
            raise QuantbenchError(
                f"the cache holds {self._ctx_tokens} tokens per sequence; prefill with room={new_tokens} or more"
            )
        for _ in range(new_tokens):
            self._step(self._last.argmax(axis=1).tolist())

    def _step(self, tokens: list[int]) -> None:
        self._decode([(t, self._pos, s, True) for s, t in enumerate(tokens)])
        self._last = np.stack([self._logits_row(s) for s in range(len(tokens))])
        self._pos += 1

    def generate(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        self.prefill(ids, 1, room=max_new_tokens + 1)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self._last[0].argmax())
            if self._llama.llama_vocab_is_eog(self._vocab, token):
                break
            new.append(token)
            if len(new) == max_new_tokens:
                break
            self._step([token])
        return new

    def synchronize(self) -> None:
        if self._ctx is not None:
            self._llama.llama_synchronize(self._ctx)

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as a string (None when the file lacks the key)."""
        buf = ctypes.create_string_buffer(1024)
        n = self._llama.llama_model_meta_val_str(self._model, key.encode("utf-8"), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def reported_footprint_bytes(self) -> int | None:
        """llama.cpp's own count of the model's tensor bytes (llama_model_size)."""
        return int(self._llama.llama_model_size(self._model))

    def device_buffers(self) -> dict[str, float]:
        """llama.cpp's reported buffer sizes in bytes, summed per device ("CUDA0", "CPU", ...) over the
        lines logged since this process started (model, KV cache and compute buffers)."""
        import re

        totals: dict[str, float] = {}
        for line in buffer_log:
            m = re.search(r"(\S+?)\s+(?:model|KV|compute|output|RS)?\s*buffer size\s*=\s*([\d.]+)\s*MiB", line)
            if m:
                name = m.group(1).split("_")[0]
                totals[name] = totals.get(name, 0.0) + float(m.group(2)) * 2**20
        return totals

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """llama.cpp's own tokenization (for a user's GGUF without an HF tokenizer beside it)."""
        lc = self._llama
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, False)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, False)
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int]) -> str:
        lc = self._llama
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in ids:
            n = lc.llama_token_to_piece(self._vocab, int(t), buf, len(buf), 0, False)
            out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def _free_context(self) -> None:
        lc = self._llama
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lc.llama_free(self._ctx)
            self._ctx = None
        self._ctx_tokens = self._ctx_seqs = 0

    def close(self) -> None:
        self._free_context()
        if getattr(self, "_model", None):
            self._llama.llama_model_free(self._model)
            self._model = None
        self._last = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

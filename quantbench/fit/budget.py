"""What llama.cpp holds in memory to run a GGUF at a given context: the rule `fit` builds for and
`compare --memory-budget` judges by.

    total = weights + KV cache + llama.cpp's compute and output buffers

- weights: the tensor bytes of the file (exact, from the type table or read back from the file);
- KV cache: llama.cpp pads the context to a multiple of 256 cells (llama-context.cpp GGML_PAD(n_ctx, 256))
  and stores, per layer, K and V rows of n_kv_heads * head_dim values per cell in the cache type
  (llama-kv-cache.cpp: ggml_row_size(type, n_embd_k_gqa * kv_size)); exact arithmetic. Sliding-window
  layers (Gemma-2/3) hold every cell too: llama.cpp's library default swa_full = true
  (llama_context_default_params), which quantbench's runtime uses; llama-cli/llama-server default to
  --swa-full off and hold fewer cells there, so on such models the count is an upper bound for them;
- buffers: measured, not modelled: llama.cpp allocates its compute graph buffer and its logits (output)
  buffer when it creates a context, and logs their sizes ("CPU compute buffer size = X MiB"); we create
  the context with the assumptions below and read them back (rounded up to the logged 0.01 MiB).

Assumptions (stated in every output): one sequence, n_batch = n_ubatch = 512 (llama.cpp's default
ubatch), flash attention on (needed for a quantized V cache; llama.cpp's "auto" picks it on CPU), CPU
backend, memory-mapped weights counted in full. Not counted: the process itself (Python, libraries),
and the tokenizer/vocabulary tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError

# KV-cache types llama.cpp supports and fit chooses among (quantized V needs flash attention).
KV_CACHE_TYPES = ("F16", "Q8_0", "Q4_0")
KV_CELL_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)
N_UBATCH = 512
_LOG_BUFFER = re.compile(r"(\w+)\s+(compute|output) buffer size =\s+([0-9.]+) MiB")


@dataclass(frozen=True)
class RuntimeSetting:
    context: int  # tokens the user wants to hold (--context)
    kv_cache_type: str = "F16"
    flash_attention: bool = True
    n_ubatch: int = N_UBATCH

    def __post_init__(self):
        if self.context < 1:
            raise QuantbenchError("--context must be at least 1 token")
        if self.kv_cache_type not in KV_CACHE_TYPES:
            raise QuantbenchError(f"KV cache type '{self.kv_cache_type}' is not one of {', '.join(KV_CACHE_TYPES)}")
        if self.kv_cache_type != "F16" and not self.flash_attention:
            raise QuantbenchError("a quantized KV cache needs flash attention in llama.cpp")

    def llama_cpp_flags(self) -> str:
        """What a llama.cpp user passes (llama-cli / llama-server) to run with this setting."""
        t = self.kv_cache_type.lower()
        return f"-c {self.context} -ub {self.n_ubatch} -ctk {t} -ctv {t} -fa {'on' if self.flash_attention else 'off'}"


def kv_cells(context: int) -> int:
    return -(-context // KV_CELL_PAD) * KV_CELL_PAD


def kv_cache_bytes(arch, setting: RuntimeSetting) -> int:
    """K and V of every layer at the padded context, in the cache type (exact)."""
    from quantbench.formats.gguf_types import ggml_tensor_bytes

    values = arch.num_kv_heads * arch.head_dim * kv_cells(setting.context)
    if setting.kv_cache_type != "F16" and arch.head_dim % 32:
        raise QuantbenchError(f"head_dim {arch.head_dim} is not a multiple of 32: llama.cpp cannot quantize this KV cache")
    return arch.num_layers * 2 * ggml_tensor_bytes(setting.kv_cache_type, (values,))


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int
    kv_cache: int
    buffers: int  # llama.cpp compute + output buffers
    setting: RuntimeSetting
    buffers_source: str  # how `buffers` was obtained

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers

    def to_json(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "buffers": self.buffers, "total": self.total,
                "setting": asdict(self.setting), "buffers_source": self.buffers_source,
                "llama_cpp_flags": self.setting.llama_cpp_flags()}

    def lines(self) -> list[str]:
        s = self.setting
        return [
            f"weights   {self.weights / 1e6:10.2f} MB",
            f"KV cache  {self.kv_cache / 1e6:10.2f} MB  ({s.kv_cache_type}, {kv_cells(s.context)} cells for --context {s.context})",
            f"buffers   {self.buffers / 1e6:10.2f} MB  (llama.cpp compute + output, n_ubatch {s.n_ubatch}, "
            f"flash attention {'on' if s.flash_attention else 'off'}; {self.buffers_source})",
            f"total     {self.total / 1e6:10.2f} MB",
        ]


def runtime_memory(weights_bytes: int, arch, setting: RuntimeSetting, buffers_bytes: int, buffers_source: str) -> MemoryBreakdown:
    """The one memory rule: weights + KV cache at the context + llama.cpp's buffers."""
    return MemoryBreakdown(int(weights_bytes), kv_cache_bytes(arch, setting), int(buffers_bytes), setting, buffers_source)


def measure_buffers(gguf_path: Path, setting: RuntimeSetting) -> int:
    """llama.cpp's compute + output buffer bytes for this model file and setting, from its own log."""
    from quantbench.runtimes.llamacpp import buffer_log, import_llama_cpp, route_llama_cpp_logs

    lc = import_llama_cpp()
    route_llama_cpp_logs()
    from quantbench.formats.gguf_types import ggml_type
    from quantbench.runtimes.llamacpp import cpu_threads

    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(gguf_path).encode("utf-8"), mparams)
    if not model:
        raise QuantbenchError(f"{gguf_path}: llama.cpp could not load this GGUF")
    try:
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = setting.context
        cparams.n_batch = cparams.n_ubatch = setting.n_ubatch
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = cpu_threads()
        cparams.type_k = cparams.type_v = ggml_type(setting.kv_cache_type).value
        cparams.flash_attn_type = 1 if setting.flash_attention else 0
        buffer_log.clear()
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            raise QuantbenchError(f"llama.cpp could not create a context of {setting.context} tokens (out of memory?)")
        lc.llama_free(ctx)
        sizes = {}
        for line in buffer_log:
            m = _LOG_BUFFER.search(line)
            if m:
                sizes[(m.group(1), m.group(2))] = float(m.group(3))
    finally:
        lc.llama_model_free(model)
    if not any(kind == "compute" for _, kind in sizes):
        raise QuantbenchError("llama.cpp did not log its compute buffer size; this llama.cpp build is not supported by fit")
    # the log rounds to 0.01 MiB: add the half step so the budget is never under-counted
    return sum(math.ceil((mib + 0.005) * 1024 * 1024) for mib in sizes.values())

"""The small surface every runtime exposes, so one evaluation loop measures them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from quantbench.arch import ArchSpec


class Runtime(ABC):
    """One loaded model. The class also knows its KV-cache layout, for `quantbench plan`."""

    name: str  # "transformers" or "llama.cpp": what recipes name in Recipe.runtime
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"
    dtype: str  # compute dtype, e.g. "float32", "bfloat16"
    # A module the measuring process must import before numpy and torch when this runtime runs on CUDA
    # (quantbench.worker reads it); None: no such constraint.
    import_first_on_cuda: str | None = None

    @abstractmethod
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits for every position of one sequence, from an empty cache: (len(ids), vocab), float32, CPU."""

    @abstractmethod
    def prefill(self, ids: Sequence[int], batch: int = 1) -> None:
        """Run the prompt `ids` (repeated `batch` times) through the model, filling a fresh KV cache."""

    @abstractmethod
    def decode(self, new_tokens: int) -> None:
        """After prefill: generate `new_tokens` tokens one at a time with the KV cache (greedy)."""

    @abstractmethod
    def generate(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of `ids` (new token ids only), stopping at EOS."""

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); timings call it before reading the clock."""

    def reported_footprint_bytes(self) -> int | None:
        """What the runtime's own API says the model occupies (transformers' get_memory_footprint)."""
        return None

    def close(self) -> None:
        """Free the model."""

    # -- KV-cache layout, from the architecture alone ---------------------------------------------
    @classmethod
    def kv_cache_tokens_per_layer(cls, arch: "ArchSpec", context: int) -> list[int]:
        """Tokens of K/V each decoder layer holds after `context` tokens of one sequence."""
        raise NotImplementedError(f"runtime {cls.name}: no KV-cache layout")

    @classmethod
    def kv_bytes_per_value(cls, compute_bytes: int) -> int:
        """Bytes of one cached K or V value when the model computes in `compute_bytes` per value."""
        return compute_bytes

    @classmethod
    def kv_cache_bytes(cls, arch: "ArchSpec", context: int, batch: int, compute_bytes: int) -> int:
        """K and V: 2 * kv_heads * head_dim * tokens * batch * bytes, summed over layers."""
        per_token = 2 * arch.num_kv_heads * arch.head_dim * cls.kv_bytes_per_value(compute_bytes) * batch
        return per_token * sum(cls.kv_cache_tokens_per_layer(arch, context))

"""The small surface every runtime exposes, so one evaluation loop measures them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch


class Runtime(ABC):
    name: str  # "transformers" or "llama.cpp"
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"
    dtype: str  # compute dtype, e.g. "float32", "bfloat16"

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

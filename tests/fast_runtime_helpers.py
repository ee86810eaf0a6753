"""Shared by the fast-runtime tests (CPU and CUDA tiers): write real artifacts, compare two runtimes."""

from __future__ import annotations

from pathlib import Path

import torch


def write_artifact(model_dir: Path, method: str, out_dir: Path, device: str) -> Path:
    """The recipe's own quantize() into out_dir: the same files `quantbench quantize` writes."""
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import resolve_model

    if not (out_dir / "config.json").is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        get_recipe(method).quantize(QuantizeJob(resolve_model(str(model_dir)), out_dir, device))
    return out_dir


def kld_and_top1(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || other) over positions, in float64, and the share of equal argmax."""
    p = reference.double().log_softmax(-1)
    q = other.double().log_softmax(-1)
    kld = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == other.argmax(-1)).double().mean().item()
    return kld, top1


def windows(vocab: int, count: int = 4, length: int = 96, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(count)]


def without_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """transformers' generate keeps the EOS it stops at; the Runtime contract (and llama.cpp's) leaves it out."""
    return tokens[:-1] if tokens and tokens[-1] in eos else tokens

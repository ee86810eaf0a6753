"""Whether the perplexity protocol starts each window with BOS: the model's own convention by default.

llama.cpp's perplexity tool prepends BOS to every chunk exactly when the vocabulary says so
(`llama_vocab_get_add_bos`, i.e. the GGUF key `tokenizer.ggml.add_bos_token`; tools/perplexity).
quantbench does the same: for a model that came as a GGUF file, that file's key; for an HF folder,
what its tokenizer does when it encodes text with special tokens (transformers' `add_special_tokens`).
A model trained with BOS scores far worse without it (Gemma-3-270m: reference PPL 105 without, 36
with, benchmarks/RESULTS.md), and every quantized model's KLD is inflated alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BosDecision:
    add_bos: bool
    reason: str  # printed in the protocol line


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when encoding text with special tokens puts the tokenizer's BOS first."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def gguf_add_bos(path: Path) -> bool | None:
    """A GGUF file's tokenizer.ggml.add_bos_token (None when the key is absent)."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.contents())


def default_bos(model_folder: Path, tokenizer, override: bool | None = None) -> BosDecision:
    """The BOS rule for a model: `override` (--add-bos / --no-add-bos) when given, else the model's own."""
    from quantbench.sources.model import source_gguf

    if override is not None:
        return BosDecision(override, "--add-bos" if override else "--no-add-bos")
    gguf_file = source_gguf(model_folder)
    if gguf_file is not None:
        flag = gguf_add_bos(gguf_file)
        if flag is not None:
            return BosDecision(flag, f"tokenizer.ggml.add_bos_token = {str(flag).lower()} in {gguf_file.name}")
    adds = tokenizer_adds_bos(tokenizer)
    return BosDecision(adds, "the tokenizer adds BOS to encoded text" if adds else "the tokenizer adds no BOS")

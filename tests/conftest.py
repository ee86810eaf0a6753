"""Shared fixtures: a tiny random Llama with a tiny BPE tokenizer, and a text, all built here (hermetic)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # quantbench/kernels' Triton kernels run on CPU in Triton's interpreter. It must be on before Triton is
    # first imported (bitsandbytes imports it), since Triton's own jit helpers (tl.zeros, tl.sum) are built then.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tiny_text() -> str:
    """CPython's own pydoc topics: plain English prose available on every Python install."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def build_tiny_llama(folder: Path, hidden: int = 64, layers: int = 2, ffn: int = 128, vocab: int = 512, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([tiny_text()[:200_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return folder


SPM_VOCAB = 640


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> Path:
    """A tiny SentencePiece tokenizer.model (what Llama-2 and Gemma checkpoints ship)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    (root / "text.txt").write_text(tiny_text()[:100_000])
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "tok"), vocab_size=SPM_VOCAB,
                                   model_type="bpe", byte_fallback=True, character_coverage=0.995, bos_id=1, eos_id=2,
                                   unk_id=3, pad_id=0, minloglevel=2, num_threads=1)
    return root / "tok.model"


def build_tiny_checkpoint(folder: Path, kind: str, spm_model: Path, **gemma3_config):
    """A random "llama" or "gemma3" checkpoint with the SentencePiece tokenizer; returns (folder, model).
    `gemma3_config`: overrides of the Gemma-3 config (e.g. sliding_window, layer_types)."""
    import json

    import transformers

    torch.manual_seed(5)
    common = dict(vocab_size=SPM_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, tie_word_embeddings=False))
    else:  # Gemma-3-270m's shape in small: head_dim != hidden/heads, q/k norms, four norms per layer, tied
        config = transformers.Gemma3TextConfig(**{**common, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 512,
                                                  "max_position_embeddings": 1024, **gemma3_config})
        model = transformers.Gemma3ForCausalLM(config)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)  # nonzero, so a norm stored without Gemma's +1 shift shows
    model.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(spm_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    return folder, model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "topics.txt"
    path.write_text(tiny_text())
    return path


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(*args: str, env: dict | None = None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Every test session gets its own quantbench cache (converted default model, references, imatrix),
    so no result depends on what an earlier run left in ~/.cache."""
    old = os.environ.get("QUANTBENCH_CACHE")
    os.environ["QUANTBENCH_CACHE"] = str(tmp_path_factory.mktemp("quantbench-cache"))
    yield
    if old is None:
        os.environ.pop("QUANTBENCH_CACHE", None)
    else:
        os.environ["QUANTBENCH_CACHE"] = old

"""GGUF writer and llama.cpp mixture plan, checked with the `gguf` package alone (no llama.cpp needed).

Oracles: the gguf package's reader and dequantizers; llama.cpp's published bits per weight for
Llama-3.1-8B (tools/quantize/README.md); the rotary layout of a GGUF written by llama.cpp's own
converter (the default model's Q4_1 file); hand-computed Q8_0 blocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantbench.arch import ArchSpec
from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_writer import (
    encode_q8_0,
    ggml_tensor_bytes,
    permute_for_rotary,
    write_gguf,
    writer_storage_type,
)

import gguf


def default_tokenizer_dir(root: Path) -> Path:
    """The default model's tokenizer (vocab 49,152), read from its GGUF without loading weights (~5 s)."""
    from transformers import AutoTokenizer

    from quantbench.sources.model import default_gguf_path

    path = default_gguf_path()
    out = root / "tokenizer"
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
    return out


def small_tokenizer_dir(root: Path) -> Path:
    """A byte-level BPE of about 360 tokens trained here on a few sentences (~1 s): small embeddings keep
    llama.cpp quantization fast. Its pre-tokenizer is unknown to llama.cpp, so it is written as "default"."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    text = [
        "The quick brown fox jumps over the lazy dog. ",
        "Quantization stores weights in fewer bits; llama.cpp reads GGUF files.",
        "Numbers 12345 and symbols !? are tokens too.",
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=400, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    out = root / "small-tokenizer"
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(root: Path, tokenizer_dir: Path, tied: bool = False, layers: int = 8, seed: int = 0, vocab_size: int = 49152) -> Path:
    """A random-weight Llama whose row widths (256, 512) are multiples of 256, so K-quants apply.
    `vocab_size` may exceed the tokenizer's: the GGUF pads the token list, as llama.cpp's converter does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so that a norm stored wrongly shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    out = root / f"tiny-llama-v{vocab_size}{'-tied' if tied else ''}"
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return default_tokenizer_dir(tmp_path_factory.mktemp("gguf-tokenizer"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("gguf-writer"), tokenizer_dir)


def hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------
# Q8_0 bytes


def test_q8_0_golden_block():
    # absmax 254 -> d = 2; 127 * 2 = 254; -63 / 2 = -31.5 rounds away from zero to -32; 1 / 2 = 0.5 -> 1.
    x = np.zeros(32, dtype=np.float32)
    x[:4] = [254.0, -63.0, 1.0, -0.9]
    block = encode_q8_0(x)
    assert block.shape == (34,)
    assert block[:2].view(np.float16)[0] == np.float16(2.0)
    assert block[2:6].view(np.int8).tolist() == [127, -32, 1, 0]
    assert block[6:].view(np.int8).tolist() == [0] * 28
    assert (encode_q8_0(np.zeros(32)) == 0).all()  # d = 0: all-zero block, no division by zero


def test_q8_0_bit_exact_with_gguf_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[3] = np.round(x[3] * 8) / 8  # exact ties after scaling
    x[5, :32] = 0.0
    ours = encode_q8_0(x)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    assert ours.shape == theirs.shape == (64, 256 // 32 * 34)
    assert np.array_equal(ours, theirs)


def test_q8_0_rejects_partial_blocks():
    with pytest.raises(QuantbenchError, match="multiple of 32"):
        encode_q8_0(np.zeros((2, 48), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------
# The writer


@pytest.mark.parametrize("out_type", ["F32", "F16", "BF16", "Q8_0"])
def test_written_file_reads_back(tiny_model, tmp_path, out_type):
    result = write_gguf(tiny_model, tmp_path / "m.gguf", out_type)
    reader = gguf.GGUFReader(str(result.path))
    config = json.loads((tiny_model / "config.json").read_text())
    arch = ArchSpec.from_config(config)
    expected = {t.gguf_name: t for t in arch.tensors()}
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32}[out_type]
    assert reader.fields["llama.block_count"].contents() == 8
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 49152

    hf = hf_weights(tiny_model)
    for name, spec in expected.items():
        t = tensors[name]
        type_name = writer_storage_type(name, spec.shape, out_type)
        assert t.tensor_type.name == type_name, name
        assert int(t.n_bytes) == ggml_tensor_bytes(type_name, spec.shape), name
        assert tuple(int(d) for d in reversed(t.shape)) == spec.shape, name
        W = hf[spec.name].astype(np.float32)
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            W = permute_for_rotary(W, 4 if "attn_q" in name else 2)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(spec.shape)
        if type_name == "F32":
            assert np.array_equal(got, W), name
        elif type_name == "F16":
            assert np.array_equal(got, W.astype(np.float16).astype(np.float32)), name
        elif type_name == "BF16":
            assert np.array_equal(got, torch.from_numpy(W).bfloat16().float().numpy()), name
        else:  # Q8_0: half a step d = absmax / 127 per block of 32, plus |q| <= 127 times d's fp16 rounding
            blocks = W.reshape(-1, 32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / 127
            d_fp16 = d.astype(np.float16).astype(np.float32)
            bound = d / 2 + 127 * np.abs(d - d_fp16)
            err = np.abs(got.reshape(-1, 32) - blocks)
            assert (err <= bound * (1 + 1e-5) + 1e-12).all(), name
            assert err.mean() < 0.3 * d.mean(), name  # round-to-nearest: mean error about d / 4
            assert np.array_equal(t.data.reshape(-1), encode_q8_0(W).reshape(-1)), name


def test_tied_model_has_no_output_tensor(tmp_path, tokenizer_dir):
    model = build_tiny_llama(tmp_path, tokenizer_dir, tied=True, layers=2)
    reader = gguf.GGUFReader(str(write_gguf(model, tmp_path / "t.gguf", "F16").path))
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names


def test_rotary_permutation_matches_llama_cpp_converter():
    """The default model's GGUF came from llama.cpp's converter: its attn_q/attn_k rows are in llama.cpp's
    rotary layout. transformers un-permuted them into our fp32 HF folder; permuting back must give the
    converter's rows (the weights sit exactly on the Q4_1 grid, so only fp32 rounding differs)."""
    from safetensors import safe_open

    from quantbench.sources.model import default_gguf_path, resolve_model

    source = resolve_model(None)
    reader = gguf.GGUFReader(str(default_gguf_path()))
    original = {t.name: t for t in reader.tensors}
    with safe_open(str(source.path / "model.safetensors"), framework="np") as f:
        for layer in (0, 17):
            for hf, gg, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
                W = f.get_tensor(f"model.layers.{layer}.self_attn.{hf}.weight").astype(np.float32)
                t = original[f"blk.{layer}.{gg}.weight"]
                ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(W.shape)
                np.testing.assert_allclose(permute_for_rotary(W, heads), ref, rtol=0, atol=1e-6)
                assert np.abs(W - ref).max() > 1e-3  # unpermuted rows differ: the test has teeth


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma2", "num_hidden_layers": 2}))
    with pytest.raises(QuantbenchError, match="llama, mistral, qwen2"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "F16")


# ---------------------------------------------------------------------------------------------------
# llama.cpp's mixture rules, from shapes alone

LLAMA_31_8B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
)
# llama.cpp tools/quantize/README.md, meta-llama/Llama-3.1-8B, bits/weight
PUBLISHED_BPW = {
    "q2_k": 3.1593, "q3_k_s": 3.6429, "q3_k_m": 3.9960, "q4_k_s": 4.6672, "q4_k_m": 4.8944, "q5_k_s": 5.5704,
    "q5_k_m": 5.7036, "q6_k": 6.5633, "q8_0": 8.5008, "iq4_xs": 4.4597, "iq4_nl": 4.6818, "f16": 16.0005,
}


@pytest.mark.parametrize("method", sorted(PUBLISHED_BPW))
def test_plan_reproduces_llama_cpp_published_bits_per_weight(method):
    from quantbench.recipes.base import get_recipe

    arch = ArchSpec.from_config(LLAMA_31_8B)
    recipe = get_recipe(f"gguf-{method}")
    stored = sum(recipe.plan_tensor(t, arch).stored_bytes for t in arch.tensors())
    # llama.cpp's figure also counts Llama 3.1's rope_freqs.weight (64 fp32), which is 6e-8 bpw here.
    assert 8 * stored / arch.num_params() == pytest.approx(PUBLISHED_BPW[method], abs=6e-5)


def test_q4_k_m_layers_with_more_bits():
    from quantbench.recipes.base import get_recipe

    arch = ArchSpec.from_config(LLAMA_31_8B)
    recipe = get_recipe("gguf-q4_k_m")
    plans = {t.gguf_name: recipe.plan_tensor(t, arch).storage for t in arch.tensors()}
    # use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2 -> 6, 9, ..., 27 (hand-listed)
    more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    for i in range(32):
        want = "Q6_K" if i in more else "Q4_K"
        assert plans[f"blk.{i}.attn_v.weight"] == want
        assert plans[f"blk.{i}.ffn_down.weight"] == want
        assert plans[f"blk.{i}.attn_q.weight"] == "Q4_K"
        assert plans[f"blk.{i}.ffn_up.weight"] == "Q4_K"
        assert plans[f"blk.{i}.attn_norm.weight"] == "F32"
    assert plans["output.weight"] == "Q6_K"
    assert plans["token_embd.weight"] == "Q4_K"


def test_fallbacks_on_rows_that_are_not_super_blocks():
    """The default model: hidden 576 (not a multiple of 256), FFN 1536 (is), tied embeddings."""
    from quantbench.recipes.base import get_recipe

    arch = ArchSpec.from_config(dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ))
    plan = {m: {t.gguf_name: get_recipe(m).plan_tensor(t, arch).storage for t in arch.tensors()}
            for m in ("gguf-q4_k_m", "gguf-q2_k", "gguf-iq4_xs", "gguf-q6_k", "gguf-q8_0", "gguf-q4_0-imat")}
    q4km = plan["gguf-q4_k_m"]
    assert q4km["blk.5.attn_q.weight"] == "Q5_0"  # Q4_K -> Q5_0 on 576-wide rows
    assert q4km["blk.0.attn_v.weight"] == "Q8_0"  # Q6_K -> Q8_0
    assert q4km["blk.0.ffn_down.weight"] == "Q6_K"  # 1536 = 6 x 256: no fallback
    assert q4km["blk.4.ffn_down.weight"] == "Q4_K"
    assert q4km["token_embd.weight"] == "Q8_0"  # tied: output rule, 576 % 256 != 0 -> Q8_0
    assert plan["gguf-q2_k"]["blk.3.ffn_up.weight"] == "Q4_0"
    assert plan["gguf-q2_k"]["blk.3.ffn_down.weight"] == "Q3_K"
    assert plan["gguf-iq4_xs"]["blk.3.attn_k.weight"] == "IQ4_NL"
    assert plan["gguf-iq4_xs"]["blk.0.ffn_down.weight"] == "Q5_K"  # i < n/8 without imatrix
    assert plan["gguf-iq4_xs"]["blk.3.ffn_down.weight"] == "IQ4_XS"
    assert plan["gguf-q6_k"]["blk.3.ffn_up.weight"] == "Q8_0"
    assert plan["gguf-q8_0"]["token_embd.weight"] == "Q8_0"
    assert plan["gguf-q4_0-imat"]["blk.2.ffn_down.weight"] == "Q4_1"  # imatrix guard, i < 30/8
    assert plan["gguf-q4_0-imat"]["blk.3.ffn_down.weight"] == "Q4_0"


def test_every_gguf_method_is_registered():
    from quantbench.recipes.base import all_recipes

    names = {r.name for r in all_recipes() if r.family == "gguf"}
    base = ["q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q3_k_s", "q2_k", "iq4_xs", "iq4_nl"]
    assert {f"gguf-{b}" for b in base + ["f32", "f16", "bf16", "q8_0"]} <= names
    assert {f"gguf-{b}-imat" for b in base} <= names
    for r in all_recipes():
        if r.family == "gguf":
            assert r.runtime == "llama.cpp" and r.needs_calibration == r.name.endswith("-imat")


def test_plan_covers_every_architecture_llama_cpp_runs():
    """The gate that allowed only llama/mistral/qwen2 is open: Gemma-2 plans through the same mixture
    rules (llama-quant.cpp has no Gemma-specific rule), under its llama.cpp name."""
    from quantbench.methods.gguf_mixture import MixtureContext
    from quantbench.recipes.base import get_recipe

    arch = ArchSpec.from_config(dict(LLAMA_31_8B, model_type="gemma2"))
    assert MixtureContext.from_arch(arch, False).gguf_arch == "gemma2"
    down = next(t for t in arch.tensors() if t.gguf_name == "blk.0.ffn_down.weight")
    assert get_recipe("gguf-q4_k_m").plan_tensor(down, arch).storage == "Q6_K"  # use_more_bits(0, 32)

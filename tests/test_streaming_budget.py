"""The streaming budget's terms: hand-computed values for Llama-3.1-8B's shape."""

from __future__ import annotations

import pytest

from quantbench.arch import ArchSpec
from quantbench.streaming.budget import disk_budget, streaming_budget

LLAMA_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)


def test_gptq_terms_on_llama_8b():
    arch = ArchSpec.from_config(LLAMA_8B)
    b = streaming_budget("gptq", arch, "cuda", source_bytes=2, calibration_samples=32, calibration_length=512, batch_size=16)
    layer = b.device_phases["one layer"]
    hessian = next(v for k, v in layer.items() if k.startswith("Hessian"))
    assert hessian == 5 * 14336**2 * 4  # the down_proj Hessian 14336^2 x 4 B = 0.82 GB, and GPTQ's copies of it
    assert layer["one decoder layer in fp32"] == 4 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096)
    assert layer["calibration activations: layer inputs and outputs, 2 x S x T x H fp32"] == 2 * 32 * 512 * 4096 * 4
    # On a GPU the host holds the baseline and at most the embedding being read (128256 x 4096 x 2 B) + a slice.
    embed = 128256 * 4096 * 2
    assert b.host_peak_bytes - b.baseline_host_bytes == embed + 64 * 2**20
    cpu = streaming_budget("gptq", arch, "cpu", source_bytes=2)
    assert not cpu.device_phases and cpu.host_peak_bytes > b.host_peak_bytes  # device terms moved onto the host
    assert cpu.host_peak_bytes < 12e9  # far below the 32 GB fp32 model the whole-model path holds


def test_every_kind_has_terms_and_disk():
    arch = ArchSpec.from_config(LLAMA_8B)
    for kind in ("rtn", "gptq", "awq", "bnb", "gguf-writer", "gguf-llama.cpp"):
        b = streaming_budget(kind, arch, "cpu")
        assert b.host_phases and all(v > 0 for terms in b.host_phases.values() for v in terms.values()), kind
        assert any("GB" in line for line in b.lines())
    disk = disk_budget("gguf-llama.cpp", arch, artifact_bytes=4_900_000_000, source_bytes=2)
    assert sum(disk.values()) > 4_900_000_000 + arch.num_params() * 2  # the intermediate GGUF counts
    with pytest.raises(ValueError):
        streaming_budget("nope", arch)


def test_llama_cpp_quantizer_holds_at_most_max_buf_size_of_rows():
    """llama.cpp converts and quantizes whole rows of a tensor, as many as fit in max_buf_size (1 GiB here)."""
    from quantbench.runtimes.llamacpp_quantize import QUANTIZER_BUFFER_BYTES

    assert QUANTIZER_BUFFER_BYTES == 2**30

    def quantizer_terms(config, source_bytes):
        b = streaming_budget("gguf-llama.cpp", ArchSpec.from_config(config), "cpu", source_bytes=source_bytes)
        return next(terms for phase, terms in b.host_phases.items() if phase.startswith("llama.cpp's quantizer"))

    # 8B, bf16 source: a row of the embedding (4096 values) takes 2 + 4 + 1 bytes per value.
    rows = 2**30 // (4096 * 7)
    assert rows == 37449 and rows < 128256  # capped: not the whole 128256-row embedding
    assert sorted(quantizer_terms(LLAMA_8B, 2).values()) == [rows * 4096, rows * 4096 * 4]
    # 405B's embedding (128256 x 16384, 2.1 G values, 8.4 GB in fp32) is capped the same way.
    big = {**LLAMA_8B, "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128}
    rows = 2**30 // (16384 * 7)
    assert sorted(quantizer_terms(big, 2).values()) == [rows * 16384, rows * 16384 * 4]
    # An fp32 source is read through the mapping: no conversion buffer; rows of 4 + 1 bytes per value.
    assert list(quantizer_terms(LLAMA_8B, 4).values()) == [2**30 // (4096 * 5) * 4096]
    # A small model's largest tensor fits whole.
    small = {**LLAMA_8B, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 1000, "num_attention_heads": 4, "num_key_value_heads": 2}
    assert sorted(quantizer_terms(small, 2).values()) == [1000 * 64, 1000 * 64 * 4]

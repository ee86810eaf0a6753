"""The synthetic bench on CPU with a tiny config: bytes against plan, the in-place bitsandbytes layout
against transformers' own, and the bandwidth-ceiling arithmetic."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from conftest import build_tiny_llama
from quantbench.arch import ArchSpec
from quantbench.bench import BenchSettings, build_random_model, measure_bandwidth, run_bench, stored_bytes
from quantbench.report.bench_table import to_markdown
from quantbench.errors import QuantbenchError

TINY = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, torch_dtype="bfloat16")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "config.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def bench_result(tiny_config):
    settings = BenchSettings(methods=("bf16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq"), prompt_tokens=16, new_tokens=4,
                             repeats=1, warmup=0, device="cpu", bandwidth_bytes=2**24)
    return run_bench(str(tiny_config), settings)


def test_bench_stored_bytes_equal_plan(bench_result):
    rows = {r["method"]: r for r in bench_result["methods"]}
    assert list(rows) == ["bf16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq"]
    for method in ("bf16", "bnb-int8", "bnb-nf4"):
        assert rows[method]["stored_bytes"] == rows[method]["planned_weight_bytes"], method
    # double quant: the JSON's float repr of the offset may be up to 3 characters shorter than planned.
    assert 0 <= rows["bnb-nf4-dq"]["planned_weight_bytes"] - rows["bnb-nf4-dq"]["stored_bytes"] <= 3 * 14
    # The bf16 model: every tensor in 2 bytes, computed by hand.
    arch = ArchSpec.from_config(TINY)
    assert rows["bf16"]["stored_bytes"] == 2 * arch.num_params()


def test_bench_ceiling_arithmetic_and_quality_na(bench_result):
    from quantbench.recipes import get_recipe

    bandwidth = bench_result["bandwidth"]["bytes_per_s"]
    h, layers, vocab = 128, 2, 512
    for r in bench_result["methods"]:
        # bf16 computes in bf16; bitsandbytes in the CPU's half dtype (fp32 on a CPU without AVX512-BF16).
        value_bytes = get_recipe(r["method"]).compute_dtype("cpu").itemsize
        embed_bytes = vocab * h * value_bytes
        kv_per_token = 2 * layers * 2 * 32 * value_bytes  # K and V, 2 KV heads of 32
        # One decode step reads all resident weights but the input embedding table, and the KV cache at
        # the mean context (16 prompt tokens + 4 / 2 new ones).
        expected_step = r["resident_bytes"] - embed_bytes + kv_per_token * (16 + 4 / 2)
        assert abs(r["bytes_read_per_decode_step"] - expected_step) <= 1
        assert r["ceiling_decode_tok_s"] == pytest.approx(bandwidth / (r["resident_bytes"] - embed_bytes + kv_per_token * 18))
        assert r["fraction_of_ceiling"] == pytest.approx(r["decode_tok_s"] / r["ceiling_decode_tok_s"])
        assert r["fraction_of_ceiling"] > 0  # below 1 on a quiet machine; two timings on a busy one can cross
        assert r["ppl"] is None and r["kld"] is None and r["quality"].startswith("n/a")
    assert "n/a" in to_markdown(bench_result) and "of ceiling" in to_markdown(bench_result)
    # transformers' footprint leaves out the 4-bit state that the stored bytes count (REFERENCE s.1).
    nf4 = next(r for r in bench_result["methods"] if r["method"] == "bnb-nf4")
    assert nf4["reported_footprint_bytes"] < nf4["stored_bytes"]


def _artifact_layout(folder) -> dict[str, tuple[str, tuple[int, ...]]]:
    with open(folder / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


_ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8", torch.int8: "I8"}


@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4"])
def test_in_place_bnb_layout_equals_transformers_artifact(method, tmp_path):
    """The bench's in-place replacement writes the same tensors (names, dtypes, shapes) as the recipe's
    transformers path (BitsAndBytesConfig at load time), the JSON blob's length aside."""
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import ModelSource

    folder = build_tiny_llama(tmp_path / "src", hidden=64, layers=2, ffn=128, vocab=512)
    source = ModelSource(folder, "tiny", "tiny")
    recipe = get_recipe(method)
    (tmp_path / "out").mkdir()
    recipe.quantize(QuantizeJob(source=source, out_dir=tmp_path / "out", device="cpu"))
    artifact = _artifact_layout(tmp_path / "out")

    config = source.config()
    arch = ArchSpec.from_config(config)
    model = recipe.bench_apply(build_random_model(config, "cpu", recipe.compute_dtype("cpu"), 0), arch, "cpu")
    in_place = {k: (_ST_DTYPE[v.dtype], tuple(v.shape)) for k, v in model.state_dict().items()}

    def without_blob(layout):
        return {k: v for k, v in layout.items() if ".quant_state.bitsandbytes__" not in k}

    assert without_blob(in_place) == without_blob(artifact)
    assert {k for k in in_place if "quant_state" in k} == {k for k in artifact if "quant_state" in k}
    assert stored_bytes(model) == pytest.approx(sum(_bytes(v) for v in artifact.values()), abs=3 * 14)


def _bytes(entry) -> int:
    dtype, shape = entry
    n = 1
    for d in shape:
        n *= d
    return n * {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1}[dtype]


def test_bandwidth_counts_read_and_write(monkeypatch):
    """2 x bytes over the median time: with a clock that advances 1 ms per copy, 2 x 1 MiB / 1 ms."""
    ticks = iter(i * 0.0005 for i in range(1000))
    monkeypatch.setattr("quantbench.bench.time.perf_counter", lambda: next(ticks))
    result = measure_bandwidth("cpu", 2**20, repeats=3)
    assert result["bytes_per_s"] == pytest.approx(2 * 2**20 / 0.0005)


def test_bench_refuses_methods_it_cannot_apply(tiny_config):
    with pytest.raises(QuantbenchError, match="quantbench compare"):
        run_bench(str(tiny_config), BenchSettings(methods=("gguf-q8_0",), device="cpu"))

"""quantbench.* metadata in GGUF key-values: pieces fit llama.cpp's 127-byte strings and read back whole."""

from __future__ import annotations

import gguf
import pytest

from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_metadata import MAX_VALUE_BYTES, from_kv, read_meta, to_kv


def test_round_trip_through_a_gguf_file(tmp_path):
    meta = {"method": "gguf-q4_k_m", "source": {"name": "/a/very/long/path/" * 20 + "modèle-ü", "fingerprint": "abc"},
            "calibration": None, "versions": {"llama-cpp-python": "0.3.36"}}
    kv = to_kv(meta)
    assert all(len(v.encode("utf-8")) <= MAX_VALUE_BYTES and len(k) < 128 for k, v in kv.items())
    assert int(kv["quantbench.json.count"]) > 3 and kv["quantbench.method"] == "gguf-q4_k_m"
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_meta(path) == meta


def test_foreign_gguf_has_none_and_damage_is_reported(tmp_path):
    assert from_kv({"general.name": "x"}) is None
    kv = to_kv({"method": "m", "x": "y" * 400})
    del kv["quantbench.json.001"]
    with pytest.raises(QuantbenchError, match="damaged"):
        from_kv(kv)
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + bytes(60))
    with pytest.raises(QuantbenchError, match="not a readable GGUF"):
        read_meta(tmp_path / "bad.gguf")


def test_quantize_dash_o_gguf_writes_one_file_that_llama_cpp_opens_and_eval_reads(tiny_model, tiny_text_file, tmp_path,
                                                                               isolated_cache):
    import gguf
    import llama_cpp

    from quantbench import api
    from quantbench.artifact import read_meta as read_artifact_meta
    from quantbench.eval.perplexity import PerplexityProtocol
    from quantbench.settings import Settings

    settings = Settings(protocol=PerplexityProtocol(window=64, max_windows=6), measure_speed=False)
    folder = tmp_path / "o"
    meta = api.quantize(str(tiny_model), "gguf-q8_0", folder / "m.gguf", text=str(tiny_text_file), device="cpu",
                        settings=settings)
    assert sorted(p.name for p in folder.iterdir()) == ["m.gguf"]  # one GGUF file, nothing beside it
    reader = gguf.GGUFReader(str(folder / "m.gguf"))  # the gguf package's own reader
    assert meta["weight_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    inside = read_artifact_meta(folder / "m.gguf")
    assert inside["method"] == "gguf-q8_0" and inside["source"]["fingerprint"] == meta["source"]["fingerprint"]
    llm = llama_cpp.Llama(model_path=str(folder / "m.gguf"), n_ctx=64, verbose=False)  # as llama-cli opens it
    assert llm.n_vocab() == 512
    llm.close()
    row = api.evaluate(folder / "m.gguf", text=str(tiny_text_file), device="cpu", settings=settings)  # origin from the file
    assert row["method"] == "gguf-q8_0" and row["runtime"] == "llama.cpp" and row["weight_bytes"] == meta["weight_bytes"]
    iv = row["kld_mean_interval"]
    assert iv["low"] <= row["kld_mean"] <= iv["high"] and iv["per_token_se"] > 0 and "block bootstrap" in iv["method"]
    assert row["bos"] == "the tokenizer adds no BOS"
    with pytest.raises(QuantbenchError, match="a .gguf output needs a gguf-\\* method"):
        api.quantize(str(tiny_model), "bnb-nf4", folder / "n.gguf", text=str(tiny_text_file), device="cpu", settings=settings)

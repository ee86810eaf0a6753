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

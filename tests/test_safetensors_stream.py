"""The streaming safetensors reader and sharded writer, against the safetensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from quantbench.errors import QuantbenchError
from quantbench.formats.safetensors import data_start, read_header
from quantbench.formats.safetensors_stream import INDEX_FILE, CheckpointReader, ShardedWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16": torch.randn(37, 19, generator=g).to(torch.bfloat16),
        "b.f16": torch.randn(5, 3, 2, generator=g).to(torch.float16),
        "c.f32": torch.randn(1000, generator=g),
        "d.i32": torch.randint(-(2**31), 2**31 - 1, (7, 11), generator=g, dtype=torch.int32),
        "e.u8": torch.randint(0, 255, (13,), generator=g, dtype=torch.uint8),
        "f.i64.scalar": torch.tensor(123456789012, dtype=torch.int64),
        "g.f64": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "h.empty": torch.zeros(0, 4),
        "i.big": torch.randn(256, 256, generator=g),  # 256 KiB: a shard of its own below
        "j.bool": torch.tensor([True, False, True]),
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_reader_matches_safetensors_library(tmp_path):
    tensors = _tensors()
    names = list(tensors)
    save_file({k: tensors[k] for k in names[:5]}, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[5:]}, str(tmp_path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    reader = CheckpointReader(tmp_path)
    assert sorted(reader.names()) == sorted(names)
    for name, expected in tensors.items():
        assert _same(reader.read(name), expected), name
    assert reader.total_bytes() == sum(t.numel() * t.element_size() for t in tensors.values())
    with pytest.raises(QuantbenchError, match="not in the checkpoint"):
        reader.read("missing")


def test_reader_does_not_map_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(512, 512)}, str(path))
    reader = CheckpointReader(tmp_path)
    w = reader.read("w")
    maps = open("/proc/self/maps").read()
    assert str(path) not in maps
    assert w.untyped_storage().nbytes() == 512 * 512 * 4  # its own buffer, not a view into something larger


@pytest.mark.parametrize("max_shard_bytes", [10**9, 100_000])
def test_writer_round_trips_through_safetensors_library(tmp_path, max_shard_bytes):
    tensors = _tensors()
    with ShardedWriter(tmp_path, max_shard_bytes=max_shard_bytes, header_bytes=4096) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
    files = sorted(tmp_path.glob("*.safetensors"))
    loaded = {}
    for f in files:
        loaded.update(load_file(str(f)))
        with safe_open(str(f), "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
    assert sorted(loaded) == sorted(tensors)
    for name, expected in tensors.items():
        assert _same(loaded[name], expected), name
    assert not list(tmp_path.glob("*.tmp*")), "temporary files left behind"
    if max_shard_bytes == 10**9:
        assert [f.name for f in files] == ["model.safetensors"] and not (tmp_path / INDEX_FILE).exists()
    else:
        # "i.big" (256 KiB) exceeds the 100 kB budget: it gets a shard of its own; others share.
        assert len(files) >= 3
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert set(index["weight_map"]) == set(tensors)
        for name, shard in index["weight_map"].items():
            assert name in read_header(tmp_path / shard)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_writer_rolls_over_when_the_header_region_is_full(tmp_path):
    with ShardedWriter(tmp_path, header_bytes=512) as writer:
        for i in range(40):
            writer.add(f"model.layers.{i}.some_long_module_name.weight", torch.full((2, 2), float(i)))
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 1
    loaded = {}
    for f in files:
        assert data_start(f) == 8 + 512
        loaded.update(load_file(str(f)))
    assert all(torch.equal(loaded[f"model.layers.{i}.some_long_module_name.weight"], torch.full((2, 2), float(i))) for i in range(40))


def test_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with ShardedWriter(tmp_path, max_shard_bytes=1000) as writer:
            writer.add("a", torch.randn(100))
            writer.add("b", torch.randn(300))
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    with ShardedWriter(tmp_path) as writer:
        writer.add("a", torch.randn(3))
        with pytest.raises(QuantbenchError, match="written twice"):
            writer.add("a", torch.randn(3))
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(QuantbenchError, match="truncated"):
        CheckpointReader(tmp_path)


def test_layer_reader_yields_exactly_one_layer(tiny_model):
    from quantbench.arch import ArchSpec

    arch = ArchSpec.from_config(json.loads((tiny_model / "config.json").read_text()))
    reader = CheckpointReader(tiny_model)
    full = load_file(str(tiny_model / "model.safetensors"))
    seen = set()
    for index, tensors in reader.iter_layers(arch):
        assert tensors and all(name.startswith(f"model.layers.{index}.") for name in tensors)
        for name, t in tensors.items():
            assert _same(t, full[name])
        seen |= set(tensors)
    assert seen == {n for n in full if n.startswith("model.layers.")}

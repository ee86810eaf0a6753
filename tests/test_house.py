"""The single homes of facts that used to be written several times: the safetensors header, the
temp-then-rename write, and dtype sizes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from quantbench.artifact import atomic_file, write_json_atomic
from quantbench.errors import QuantbenchError
from quantbench.formats import safetensors


def _file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.bfloat16)}, str(path))
    return path


def test_tensor_bytes_are_dtype_times_shape(tmp_path):
    got = safetensors.tensor_bytes(_file(tmp_path))
    assert got == {"a": 3 * 5 * 4, "b": 7 * 2}


@pytest.mark.parametrize("damage", ["garbled", "truncated", "short", "huge_length"])
def test_damaged_header_is_one_clear_error(tmp_path, damage):
    path = _file(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if damage == "garbled":
        data = data[:8] + b"{not json" + data[17:]
    elif damage == "truncated":
        data = data[: 8 + n + 10]  # the header promises more data than is there
    elif damage == "short":
        data = data[:5]
    else:
        data = struct.pack("<Q", 1 << 40) + data[8:]
    path.write_bytes(data)
    with pytest.raises(QuantbenchError, match="re-download"):
        safetensors.read_header(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32,
                                   torch.int64, torch.float64, torch.bool])
def test_dtype_bytes_match_torch(dtype):
    assert safetensors.dtype_bytes(str(dtype)) == torch.tensor([], dtype=dtype).element_size()


def test_atomic_file_leaves_old_content_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

"""Bad input is refused before any work: too little disk, too little memory even streaming, a device
list naming a GPU that does not exist."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from quantbench.errors import QuantbenchError
from quantbench.plan.resources import check_quantize_resources


def test_enough_resources_pass_and_report(tiny_model, tmp_path):
    out = check_quantize_resources(tiny_model, "rtn-w4g128", tmp_path / "out", "cpu", 0, 0)
    assert out["checked"] and 0 < out["disk_need_bytes"] < out["disk_free_bytes"]
    assert 0 < out["host_need_bytes"] < out["host_available_bytes"]


def test_too_little_disk_is_refused(tiny_model, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(QuantbenchError, match="not enough disk .* the job needs .*artifact"):
        check_quantize_resources(tiny_model, "gguf-q4_k_m", tmp_path / "out", "cpu", 0, 0)


def test_too_little_ram_even_streaming_is_refused(tiny_model, tmp_path, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=50 * 10**6))
    with pytest.raises(QuantbenchError, match="not enough host memory even streaming"):
        check_quantize_resources(tiny_model, "gptq-w4g128", tmp_path / "out", "cpu", 32, 512)


def test_device_list_naming_a_missing_gpu(monkeypatch):
    import torch

    from quantbench import device

    with pytest.raises(QuantbenchError, match="cuda:N"):
        device.resolve_devices(["gpu0"], "cuda")
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve_devices(None, "cuda") == ["cuda:0", "cuda:1"]
    assert device.resolve_devices(["cuda:1", "cuda:0"], "cuda") == ["cuda:1", "cuda:0"]
    with pytest.raises(QuantbenchError, match="names cuda:2, but this process sees 2 GPU"):
        device.resolve_devices(["cuda:0", "cuda:2"], "cuda")
    with pytest.raises(QuantbenchError, match="twice"):
        device.resolve_devices(["cuda:0", "cuda:0"], "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert device.isolate_gpu("cuda:1") == ({"CUDA_VISIBLE_DEVICES": "6"}, "cuda")

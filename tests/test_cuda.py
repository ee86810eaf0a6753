"""Device tier: runs only where CUDA exists (the lent GPU); CI has none and reports these as skipped."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU)")]


def test_compare_on_cuda_measures_on_the_gpu(tiny_model, tiny_text_file, tmp_path):
    out = tmp_path / "cmp"
    res = run_cli("compare", str(tiny_model), "--methods", "fp32,bf16,bnb-int8,bnb-nf4", "--text", str(tiny_text_file),
                  "--out", str(out), "--window", "64", "--windows", "4", "--device", "cuda", "--prompt-tokens", "16",
                  "--new-tokens", "8", "--repeats", "2", "--runtime", "transformers")
    assert res.returncode == 0, res.stderr
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    for row in rows.values():
        assert row["status"] == "ok" and row["device"].startswith("cuda") and row["runtime"] == "transformers"
        assert row["peak_memory_kind"] == "torch.cuda.max_memory_allocated" and row["peak_memory_bytes"] > 0
    assert rows["fp32"]["kld_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows["bf16"]["kld_mean"] < rows["bnb-nf4"]["kld_mean"]
    # transformers' footprint leaves the 4-bit absmax state out; the stored bytes do not.
    assert rows["bnb-nf4"]["reported_footprint_bytes"] < rows["bnb-nf4"]["weight_bytes"]


def test_cuda_and_cpu_reference_agree(tiny_model):
    from quantbench.runtimes.hf import HFRuntime

    ids = list(range(3, 60))
    cpu = HFRuntime.load(tiny_model, "cpu", dtype=torch.float32).logits(ids)
    gpu = HFRuntime.load(tiny_model, "cuda", dtype=torch.float32).logits(ids)
    assert torch.allclose(cpu, gpu, atol=2e-3, rtol=0)

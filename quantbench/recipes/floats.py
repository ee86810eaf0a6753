"""Unquantized precisions: fp32, bf16, fp16. The reference is the model's own precision."""

from __future__ import annotations

from pathlib import Path

import torch

from quantbench.recipes.base import QuantizeJob, Recipe, TensorPlan, register
from quantbench.recipes.strategy import LOAD_CONVERT
from quantbench.runtimes.hf import HFRuntime


class FloatRecipe(Recipe):
    family = "float"
    runtime = "transformers"
    strategy = LOAD_CONVERT
    in_place = True

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype
        self.description = f"every tensor in {name}, no quantization"

    def unavailable_reason(self, device: str) -> str | None:
        if self.dtype == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16; use fp16"
        return None

    def quantize(self, job: QuantizeJob) -> dict:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(job.source.path, dtype=self.dtype, device_map="cpu")
        model.save_pretrained(job.out_dir)
        AutoTokenizer.from_pretrained(job.source.path).save_pretrained(job.out_dir)
        return {"dtype": str(self.dtype).removeprefix("torch.")}

    def open(self, artifact: Path, device: str) -> HFRuntime:
        return HFRuntime.load(artifact, device, dtype=self.dtype)

    def plan_tensor(self, tensor, arch, device="cuda", resident=False) -> TensorPlan:
        return TensorPlan(tensor.name, tensor.numel, tensor.numel * self.dtype.itemsize, False, self.name)

    def compute_dtype(self, device: str) -> torch.dtype:
        return self.dtype

    def bench_apply(self, model, arch, device):
        return model  # built in this dtype already


register(FloatRecipe("fp32", torch.float32))
register(FloatRecipe("bf16", torch.bfloat16))
register(FloatRecipe("fp16", torch.float16))

"""Round-to-nearest on an asymmetric min-max integer grid (the baseline), as compressed-tensors.

Names `rtn-w{2,3,4,8}g{32,64,128}`: bits and group size. No calibration: each linear goes to the
device alone, in fp32.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from quantbench.arch import LINEAR
from quantbench.recipes.base import register
from quantbench.recipes.intgrid import IntGridRecipe
from quantbench.recipes.strategy import MODEL_PER_TENSOR


class RTNRecipe(IntGridRecipe):
    family = "rtn"
    strategy = MODEL_PER_TENSOR

    def quantize_model(self, model, arch, job, group_size, dtype_name):
        from quantbench.methods.rtn import RTNConfig, rtn_quantize

        config = RTNConfig(self.bits, group_size, dtype_name)
        start = time.perf_counter()
        linears = {}
        with torch.no_grad():
            for t in arch.tensors():
                if t.role == LINEAR:
                    module = t.name.removesuffix(".weight")
                    W = model.get_submodule(module).weight.detach().to(job.device)
                    linears[module] = rtn_quantize(W, config).to("cpu")
        return linears, {"config": asdict(config), "quantize_seconds": time.perf_counter() - start}


for _bits in (2, 3, 4, 8):
    for _group in (32, 64, 128):
        register(RTNRecipe(f"rtn-w{_bits}g{_group}", _bits, _group, f"round-to-nearest, {_bits}-bit asymmetric min-max grid per {_group} weights (baseline)"))

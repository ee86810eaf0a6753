"""Round-to-nearest on an asymmetric min-max integer grid (the baseline), as compressed-tensors.

Names `rtn-w{2,3,4,8}g{32,64,128}`: bits and group size. No calibration: each linear is read from the
checkpoint alone, quantized on the device in fp32 and appended to the artifact (quantbench/streaming).
"""

from __future__ import annotations

from dataclasses import asdict

from quantbench.recipes.base import register
from quantbench.recipes.intgrid import IntGridRecipe
from quantbench.recipes.strategy import STREAM_RTN


class RTNRecipe(IntGridRecipe):
    family = "rtn"
    strategy = STREAM_RTN

    def quantize_streaming(self, job, arch, group_size, dtype_name):
        from quantbench.methods.rtn import RTNConfig
        from quantbench.streaming.intgrid import quantize_rtn_streaming

        config = RTNConfig(self.bits, group_size, dtype_name)
        streamed = quantize_rtn_streaming(job.source.path, job.out_dir, config, job.device)
        return streamed, {"config": asdict(config)}


for _bits in (2, 3, 4, 8):
    for _group in (32, 64, 128):
        register(RTNRecipe(f"rtn-w{_bits}g{_group}", _bits, _group, f"round-to-nearest, {_bits}-bit asymmetric min-max grid per {_group} weights (baseline)"))

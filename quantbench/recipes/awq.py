"""AWQ (Lin et al., 2024): activation-aware per-channel scales and clipping, then 4-bit round-to-nearest,
layer by layer, as compressed-tensors. The algorithm is methods/awq.py; `awq-w4g128`.
"""

from __future__ import annotations

from dataclasses import asdict

from quantbench.recipes.base import register
from quantbench.recipes.intgrid import CalibratedRecipe
from quantbench.recipes.strategy import STREAM_AWQ


class AWQRecipe(CalibratedRecipe):
    family = "awq"
    strategy = STREAM_AWQ

    def quantize_streaming(self, job, arch, group_size, dtype_name):
        from quantbench.methods import sequential
        from quantbench.methods.awq import AWQConfig

        sequential.check_awq_supported(arch)
        samples, record = self.calibration(job)
        config = AWQConfig(bits=self.bits, group_size=group_size, scale_dtype=dtype_name)

        def layer_fn(layer, inputs, prefix, result):
            sequential.awq_layer(layer, inputs, prefix, arch.family, lambda name, W: config, result)

        streamed = self.run_streaming(job, samples, group_size, dtype_name, layer_fn)
        return streamed, {"config": asdict(config), "calibration": record, **self.summarize(streamed)}


register(AWQRecipe("awq-w4g128", 4, 128, "AWQ: activation-aware channel scales + clipping, then 4-bit round-to-nearest per 128 weights"))

"""GPTQ (Frantar et al., 2023) on an asymmetric integer grid, layer by layer, as compressed-tensors.

Names `gptq-w{2,3,4,8}g{32,64,128}`, and `gptq-w{3,4}g128-act` (act-order with static groups). The
algorithm is methods/gptq.py; options (QuantizeOptions): `damp`, `act_order`, `true_sequential`.
"""

from __future__ import annotations

from dataclasses import asdict

from quantbench.recipes.base import register
from quantbench.recipes.intgrid import CalibratedRecipe


class GPTQRecipe(CalibratedRecipe):
    family = "gptq"

    def __init__(self, name, bits, group_size, description, act_order=False):
        super().__init__(name, bits, group_size, description)
        self.act_order = act_order

    def quantize_streaming(self, job, arch, group_size, dtype_name):
        from quantbench.methods import sequential
        from quantbench.methods.gptq import GPTQConfig

        samples, record = self.calibration(job)
        config = GPTQConfig(
            bits=self.bits,
            group_size=group_size,
            damp=job.options.damp,
            act_order=self.act_order if job.options.act_order is None else job.options.act_order,
            static_groups=True,  # compressed-tensors stores no g_idx
            scale_dtype=dtype_name,
        )
        true_sequential = job.options.true_sequential

        def layer_fn(layer, inputs, prefix, result):
            sequential.gptq_layer(layer, inputs, prefix, arch.family, lambda name, W: config, result, true_sequential)

        streamed = self.run_streaming(job, samples, group_size, dtype_name, layer_fn)
        return streamed, {"config": asdict(config), "true_sequential": true_sequential, "calibration": record, **self.summarize(streamed)}


for _bits in (2, 3, 4, 8):
    for _group in (32, 64, 128):
        register(GPTQRecipe(f"gptq-w{_bits}g{_group}", _bits, _group, f"GPTQ, {_bits}-bit asymmetric grid per {_group} weights, calibrated; compressed-tensors checkpoint"))
for _bits in (3, 4):
    register(GPTQRecipe(f"gptq-w{_bits}g128-act", _bits, 128, f"GPTQ with act-order (static groups), {_bits}-bit per 128 weights", act_order=True))

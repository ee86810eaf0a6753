"""Importance matrix: how strongly each input column of each linear layer is driven by real text.

llama.cpp's `llama-imatrix` (tools/imatrix/imatrix.cpp, collect_imatrix) hooks every matrix
multiplication `y = W x` of the model while it runs calibration text and accumulates, per weight
matrix and per input column j,

    imatrix_j = (1 / N) * sum_{tokens t} x_{t,j}^2          (N = number of tokens seen)

i.e. the diagonal of the activation second moment E[x x^T]. The quantizer then minimises a weighted
rounding error sum_j imatrix_j * (w_j - q(w_j))^2 per row instead of the plain squared error, which is
the diagonal of the GPTQ/OBS objective (W - Q) H (W - Q)^T with H = E[x x^T].

As llama-imatrix does by default, the output projection (lm_head) is not collected (its `--output`
switch is off by default), and the token embedding is a lookup, not a matmul.

Format-neutral result: keyed by the HF weight name (e.g. "model.layers.0.mlp.down_proj.weight");
the GGUF recipe maps the names to GGUF tensor names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImatrixConfig:
    include_lm_head: bool = False  # llama-imatrix's --output: off by default
    version: int = 1

    def __post_init__(self):
        if not isinstance(self.include_lm_head, bool):
            raise QuantbenchError("ImatrixConfig.include_lm_head must be True or False")


@dataclass(frozen=True)
class Imatrix:
    """Mean squared input activation per input column, for every collected linear."""

    values: dict[str, torch.Tensor]  # HF weight name -> (cols,) float32, mean of x_j^2 over tokens
    tokens: int  # tokens seen by every linear (N above)
    sequences: int
    config: ImatrixConfig = field(default_factory=ImatrixConfig)


def collect_imatrix(model: torch.nn.Module, sequences: Sequence[Sequence[int]], config: ImatrixConfig = ImatrixConfig()) -> Imatrix:
    """Run `sequences` through `model` (an HF causal LM) and accumulate sum x^2 per linear input column.

    Each sequence is one forward pass from an empty cache, as llama-imatrix evaluates each chunk.
    """
    if not sequences or not any(len(s) for s in sequences):
        raise QuantbenchError("the importance matrix needs calibration text: no calibration tokens were given")
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}  # weight name -> (cols,) float64 sum over tokens of x_j^2
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(weight_name: str):
        def hook(module, inputs):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # (tokens, cols)
            sums[weight_name] = sums.get(weight_name, 0) + (x * x).sum(dim=0)
            counts[weight_name] = counts.get(weight_name, 0) + x.shape[0]

        return hook

    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is lm_head and not config.include_lm_head:
            continue
        hooks.append(module.register_forward_pre_hook(make_hook(module_name + ".weight")))
    if not hooks:
        raise QuantbenchError("the model has no linear layers to collect an importance matrix from")
    try:
        with torch.no_grad():
            for ids in sequences:
                if len(ids):
                    model(torch.tensor([list(ids)], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    total = sum(len(s) for s in sequences)
    values = {name: (sums[name] / counts[name]).to(torch.float32).cpu() for name in sums}
    for name, v in values.items():
        if not torch.isfinite(v).all():
            raise QuantbenchError(f"importance matrix for {name} has non-finite values: the model overflows on the calibration text")
    return Imatrix(values, total, sum(1 for s in sequences if len(s)), config)


def compute_imatrix(model_dir: Path, sequences: Sequence[Sequence[int]], device: str = "cpu", config: ImatrixConfig = ImatrixConfig()) -> Imatrix:
    """Load the full-precision HF model in `model_dir` (fp32) and collect its importance matrix."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    try:
        return collect_imatrix(model, sequences, config)
    finally:
        del model

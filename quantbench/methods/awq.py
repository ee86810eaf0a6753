"""AWQ (Lin et al., MLSys 2024): activation-aware per-input-channel scales, then round-to-nearest.

Scaling input channel i of a linear by s_i and dividing the op that produces that channel by s_i is
exact in full precision; after rounding, the error of channel i shrinks about as 1/s_i (paper s.3.2).
AWQ picks s = mean|x|^alpha (normalized), with alpha from a grid in [0, 1) that minimizes the output
error of the linears reading that activation, then searches per group a symmetric clipping range
[-m, m] with m = max|w| * (1 - k/grid) (the `auto_clip` of the authors' code, shrinking by up to 50%).

The output error is measured with the inputs' Hessian H = 2 X^T X / tokens, as
trace(dW H dW^T) = 2/tokens * ||X dW^T||^2 (what GPTQ minimizes), so no activations are kept. The
authors measure the loss of q/k/v after the attention block instead; here each linear's own output
counts, and q/k are not clipped (their errors pass through the softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.gptq import output_error
from quantbench.methods.rtn import RTNConfig, rtn_quantize, validate_grid


@dataclass(frozen=True)
class AWQConfig:
    bits: int = 4
    group_size: int = 128
    scale_grid: int = 20  # alpha in {0, 1/20, ..., 19/20} (paper / llm-awq n_grid=20)
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5  # clipping range shrinks by at most this fraction (llm-awq)
    scale_dtype: str = "float16"
    version: int = 1

    def __post_init__(self):
        validate_grid(self.bits, self.group_size, self.scale_dtype)
        if self.scale_grid < 1 or self.clip_grid < 1:
            raise QuantbenchError("AWQ search grids need at least one point")
        if not 0 <= self.max_shrink < 1:
            raise QuantbenchError(f"max_shrink={self.max_shrink}: must be in [0, 1)")

    def rtn(self) -> RTNConfig:
        return RTNConfig(self.bits, self.group_size, self.scale_dtype)


def scale_search(Ws: list[torch.Tensor], H: torch.Tensor, x_mean: torch.Tensor, configs: list[AWQConfig]) -> tuple[torch.Tensor, float]:
    """Best per-channel scale s (cols,) for linears W (rows_k, cols) reading inputs with Hessian H (cols, cols)
    and mean |x| per channel x_mean (cols,). Returns s and its exponent alpha."""
    x_mean = x_mean.float()
    Ws = [W.detach().float() for W in Ws]
    best = (math.inf, None, 0.0)
    for step in range(configs[0].scale_grid):
        alpha = step / configs[0].scale_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)  # (cols,)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (llm-awq)
        loss = 0.0
        for W, config in zip(Ws, configs):
            W_hat = rtn_quantize(W * s[None, :], config.rtn()).dequantize() / s[None, :]
            loss += output_error(W, W_hat, H)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2]


def clip_search(W: torch.Tensor, H: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """W (rows, cols) clamped per (row, group) to the [-m, m] that minimizes that group's output error
    trace(dW_g H_gg dW_g^T) (the group's own block of H, as llm-awq scores each group alone)."""
    W = W.detach().float()
    rows, cols = W.shape
    best_W = W.clone()
    for group_start in range(0, cols, config.group_size * 16):  # 16 groups at a time bound scratch memory
        group_end = min(group_start + config.group_size * 16, cols)
        for start, width in _group_runs(group_start, group_end, config.group_size):
            count = (group_end - start) // width if width == config.group_size else 1
            Wg = W[:, start : start + width * count].reshape(rows, count, width)  # (rows, groups, g)
            Hg = torch.stack([H[start + k * width : start + (k + 1) * width, start + k * width : start + (k + 1) * width] for k in range(count)]).float()  # (groups, g, g)
            max_abs = Wg.abs().amax(dim=2, keepdim=True)  # (rows, groups, 1)
            best_loss = torch.full((rows, count), math.inf, device=W.device)
            best = Wg.clone()
            for k in range(int(config.max_shrink * config.clip_grid)):
                m = max_abs * (1 - k / config.clip_grid)
                clipped = torch.clamp(Wg, -m, m)
                q = rtn_quantize(clipped.reshape(rows, count * width), RTNConfig(config.bits, width, config.scale_dtype))
                dW = Wg - q.dequantize().reshape(rows, count, width)
                loss = torch.einsum("rgi,gij,rgj->rg", dW, Hg, dW)  # (rows, groups)
                better = loss < best_loss
                best_loss = torch.where(better, loss, best_loss)
                best = torch.where(better[:, :, None], clipped, best)
            best_W[:, start : start + width * count] = best.reshape(rows, count * width)
    return best_W


def _group_runs(start: int, end: int, group_size: int):
    """(first column, width) of the runs of whole groups and of a shorter last group in [start, end)."""
    whole = (end - start) // group_size * group_size
    if whole:
        yield start, group_size
    if end - start - whole:
        yield start + whole, end - start - whole


@torch.no_grad()
def fold_scale_into_parent(parent: torch.nn.Module, s: torch.Tensor) -> None:
    """Divide the outputs of `parent` (an RMSNorm/LayerNorm or a Linear) by s (channels,), in place."""
    if isinstance(parent, torch.nn.Linear):
        parent.weight.div_(s[:, None].to(parent.weight.dtype))
    elif getattr(parent, "weight", None) is not None and parent.weight.dim() == 1:
        parent.weight.div_(s.to(parent.weight.dtype))
    else:
        raise QuantbenchError(f"AWQ cannot fold scales into {type(parent).__name__}")
    if getattr(parent, "bias", None) is not None:
        parent.bias.div_(s.to(parent.bias.dtype))

"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023): column-by-column rounding with OBS updates.

For a linear layer with weight W (rows, cols) and calibration inputs X (tokens, cols), GPTQ minimizes
||W X^T - Q X^T||^2 over grid values Q, one column at a time: quantize column j, then spread its error
over the columns not yet quantized, weighted by the inverse Hessian H^-1 of the remaining columns
(H = 2 X^T X / tokens). The paper's three implementation steps, all here:

- Cholesky: the rows of the upper Cholesky factor of H^-1 hold, for every step, the inverse Hessian
  of the remaining columns (paper s.4, step 3), so H^-1 is never downdated explicitly;
- lazy batches: updates inside a block of `block_size` columns are applied at once to the rest (step 2);
- act-order: columns visited by descending diag(H) (the reference code's `--act-order`).

Grids are the per-group asymmetric min-max grids of quantbench.methods.rtn. With act-order, a group's
grid is either chosen from the ORIGINAL W in natural column order (`static_groups`, the form
compressed-tensors and vLLM store without a g_idx) or from the updated W when the sweep reaches the
group's first column in processing order (the reference code's form, which needs a g_idx).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.rtn import SCALE_DTYPES, QuantizedLinear, dequantize_grid, minmax_grid, quantize_to_grid, validate_grid


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int = 128
    damp: float = 0.01  # added to diag(H), as a fraction of its mean (paper: 1%)
    block_size: int = 128  # columns per lazy batch; rounded up to a multiple of group_size
    act_order: bool = False
    static_groups: bool = True  # with act_order: grids from the original W per natural group, no g_idx
    scale_dtype: str = "float16"
    version: int = 1

    def __post_init__(self):
        validate_grid(self.bits, self.group_size, self.scale_dtype)
        if not 0 < self.damp < 1:
            raise QuantbenchError(f"damp={self.damp}: must be in (0, 1); the paper uses 0.01")
        if self.block_size < 1:
            raise QuantbenchError(f"block_size={self.block_size}: must be positive")


class HessianAccumulator:
    """Observe: H = 2/tokens * sum over calibration tokens of x x^T, in float32 (float64 for float64 x)."""

    def __init__(self, cols: int, device, dtype=torch.float32):
        self.H = torch.zeros(cols, cols, device=device, dtype=dtype)  # (cols, cols)
        self.tokens = 0

    def add(self, X: torch.Tensor) -> None:
        X = X.reshape(-1, X.shape[-1]).to(self.H.dtype)  # (tokens, cols)
        n = X.shape[0]
        self.H *= self.tokens / (self.tokens + n)
        self.tokens += n
        self.H += (2.0 / self.tokens) * (X.T @ X)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig) -> QuantizedLinear:
    """Quantize W (rows, cols) given the Hessian H (cols, cols) of its inputs. Neither is modified."""
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    W = W.detach().to(compute).clone()  # (rows, cols), updated in place as columns are quantized
    H = H.detach().to(compute).clone()  # (cols, cols)
    rows, cols = W.shape
    group_size, bits = config.group_size, config.bits

    dead = torch.diag(H) == 0  # inputs that never fire: their weights cannot matter, set them to 0
    H[dead, dead] = 1
    W[:, dead] = 0

    n_groups = -(-cols // group_size)
    scales = torch.zeros(rows, n_groups, dtype=compute, device=W.device)
    zeros = torch.zeros(rows, n_groups, dtype=compute, device=W.device)
    static = config.act_order and config.static_groups
    if static:  # grids of the natural groups, from W before any update
        for group in range(n_groups):
            scales[:, group], zeros[:, group] = minmax_grid(W[:, group * group_size : (group + 1) * group_size], bits, config.scale_dtype)

    perm = torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]  # from here on, column index = position in processing order
    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=compute, device=W.device)
    L, info = torch.linalg.cholesky_ex(H)
    if info != 0:
        raise QuantbenchError("GPTQ: the damped Hessian is not positive definite; raise damp (e.g. 0.05) or give more calibration samples")
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # (cols, cols) upper factor of H^-1

    Q = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)  # codes, processing order
    group_of_col = torch.zeros(cols, dtype=torch.long, device=W.device)  # processing order
    block_size = group_size * -(-config.block_size // group_size)  # groups never straddle a block
    for block_start in range(0, cols, block_size):
        block_end = min(block_start + block_size, cols)
        W1 = W[:, block_start:block_end].clone()  # (rows, block) this block, kept up to date
        Err1 = torch.zeros_like(W1)  # (rows, block) scaled errors, applied to later blocks at once
        Hinv1 = Hinv[block_start:block_end, block_start:block_end]  # (block, block)
        for col_in_block in range(block_end - block_start):
            col = block_start + col_in_block
            if static:
                group = int(perm[col]) // group_size
            else:  # a group begins every group_size columns of processing order
                group = col // group_size
                if col % group_size == 0:
                    scales[:, group], zeros[:, group] = minmax_grid(W1[:, col_in_block : col_in_block + group_size], bits, config.scale_dtype)
            group_of_col[col] = group
            w = W1[:, col_in_block]  # (rows,)
            q = quantize_to_grid(w, scales[:, group], zeros[:, group], bits)
            Q[:, col] = q.to(torch.uint8)
            err = (w - dequantize_grid(q, scales[:, group], zeros[:, group])) / Hinv1[col_in_block, col_in_block]
            W1[:, col_in_block:] -= err[:, None] * Hinv1[col_in_block, col_in_block:][None, :]
            Err1[:, col_in_block] = err
        W[:, block_end:] -= Err1 @ Hinv[block_start:block_end, block_end:]

    invperm = torch.argsort(perm)
    g_idx = None
    if config.act_order and not static:
        g_idx = group_of_col[invperm].to(torch.int32)  # (cols,) natural order
    return QuantizedLinear(
        codes=Q[:, invperm],
        scales=scales.to(SCALE_DTYPES[config.scale_dtype]),
        zeros=zeros.to(torch.uint8),
        bits=bits,
        group_size=group_size,
        g_idx=g_idx,
    )


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||W X^T - W_hat X^T||^2 / tokens * 2 = trace(dW H dW^T): the quantity GPTQ minimizes."""
    dW = (W.to(H.dtype) - W_hat.to(H.dtype))  # (rows, cols)
    return float(((dW @ H) * dW).sum())

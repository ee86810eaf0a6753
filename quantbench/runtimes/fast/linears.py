"""One stored linear, ready to multiply: the fast runtime's only door to `quantbench.kernels`.

Each linear keeps its weight as stored (a kernels weight class, or a plain tensor for floats) and the
fast kernel the kernels registry picks for it on this device. `kernel` names the code that runs (every
bench row records it) and `numerics` says where that arithmetic differs from the artifact's reference.

Where the registry has no fast kernel for a weight, the linear runs the format's pure-PyTorch reference
matmul (exact, slow: it dequantizes the layer for every call) and says so in `kernel`; it never
switches to another format's arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantbench import kernels
from quantbench.errors import QuantbenchError
from quantbench.runtimes.fast import stored

OWN_NUMERICS = "the artifact's own"
# Calls with at least this many rows (prefill) dequantize the layer once and use cuBLAS: the packed GEMM
# kernels are built for decode batches (measured on the H200: nf4 prefill at 315 tok/s through them).
PREFILL_DEQUANTIZE_ROWS = 128
# The executable spec of each format (kernels.reference), for weights no fast kernel takes.
REFERENCE_MATMULS = {kernels.DENSE: kernels.matmul_dense, kernels.INT_GROUP: kernels.matmul_int_group,
                     kernels.BNB_4BIT: kernels.matmul_bnb_4bit, kernels.BNB_INT8: kernels.matmul_bnb_int8}


class Linear:
    """y = x W^T (+ bias) for x (M, cols) in the compute dtype, with the weight kept packed."""

    max_tokens = 0  # rows of x per kernel call (0: any)
    _dequantize = None  # (weight, dtype) -> dense W, for prefill; None: the matmul kernel does every call

    def __init__(self, weight, bias: torch.Tensor | None, x_dtype: torch.dtype):
        self.weight = weight
        self.bias = bias
        self.format = stored.weight_format(weight)
        try:
            fast = kernels.pick_fast(self.format, weight, self._device(), x_dtype)
        except QuantbenchError as why:
            self.prepared = weight
            self._matmul = REFERENCE_MATMULS[self.format]
            self.kernel = f"reference (pure PyTorch; {why})"
            self.numerics = OWN_NUMERICS
        else:
            self.prepared = fast.prepare(weight)
            self._matmul = fast.matmul
            # The format's fast dequantizer (bit-exact with its reference), for prefill GEMMs. Rounding W to x's
            # dtype there is what the fast kernels' batch > 1 path and bitsandbytes' own matmul_4bit do.
            self._dequantize = kernels.kernels_for(self.format).fast_dequantize
            self.kernel = fast.name
            self.numerics = fast.numerics
            # The LLM.int8 kernel takes at most 64 tokens a call (its numerics note); its outlier columns are
            # then chosen per 64-token slice of a prompt, as they would be for prompts of that length.
            self.max_tokens = 64 if self.format == kernels.BNB_INT8 else 0
            if self.max_tokens:
                self.numerics += "; prompts run in 64-token calls, so outlier columns are chosen per call"

    def _device(self) -> torch.device:
        if isinstance(self.weight, torch.Tensor):
            return self.weight.device
        return next(v for v in vars(self.weight).values() if isinstance(v, torch.Tensor)).device

    @property
    def shape(self) -> tuple[int, int]:
        if isinstance(self.weight, torch.Tensor):
            return tuple(self.weight.shape)
        return (self.weight.rows, self.weight.cols)

    @property
    def nbytes(self) -> int:
        """Device bytes this linear holds: the stored weight (or its prepared form, if larger) and bias."""
        held = max(stored.stored_nbytes(self.weight), _tensor_bytes(self.prepared))
        return held + (0 if self.bias is None else self.bias.nbytes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._dequantize is not None and x.shape[0] >= PREFILL_DEQUANTIZE_ROWS:
            # Prefill: one transient dense copy of this layer (allowed by the memory rule), then cuBLAS.
            return F.linear(x, self._dequantize(self.weight, x.dtype), self.bias)
        if self.max_tokens and x.shape[0] > self.max_tokens:  # prefill through a kernel that takes few rows a call
            return torch.cat([self._matmul(part, self.prepared, self.bias) for part in x.split(self.max_tokens)])
        return self._matmul(x, self.prepared, self.bias)


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    if hasattr(obj, "__dict__") or hasattr(obj, "__dataclass_fields__"):
        return sum(_tensor_bytes(v) for v in vars(obj).values() if isinstance(v, (torch.Tensor, tuple, list)))
    return 0


def fuse_dense(linears: list[Linear]) -> list[Linear]:
    """Dense linears that read the same input become one matrix (one GEMV instead of several); the parts
    are released as the fused weight is made, so a load holds at most one layer's extra copy."""
    if not all(lin.format == kernels.DENSE for lin in linears):
        return linears
    biases = [lin.bias for lin in linears]
    if any(b is not None for b in biases) and not all(b is not None for b in biases):
        return linears
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    bias = torch.cat(biases) if biases[0] is not None else None
    x_dtype = weight.dtype
    for lin in linears:
        lin.weight = lin.prepared = None
    return [Linear(weight, bias, x_dtype)]

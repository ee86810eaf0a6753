"""kernels/: tensors in, tensors out. Dequantize and quantized matmul for every weight format quantbench
writes, as a readable pure-PyTorch reference (the spec) and fast kernels registered beside it.

The public surface (what a runtime such as the fast CUDA decoder calls):

    weights    IntGroupWeight      compressed-tensors pack-quantized int2/3/4/8 group-wise (rtn/gptq/awq)
               Bnb4bitWeight       bitsandbytes nf4/fp4, with or without double quant
               BnbInt8Weight       bitsandbytes LLM.int8 (int8 weight + SCB row scales, threshold)
               (a plain bf16/fp16 weight is just a tensor)
    reference  dequantize_int_group, matmul_int_group, dequantize_bnb_4bit, matmul_bnb_4bit,
               dequantize_bnb_int8, matmul_bnb_int8 (the outlier decomposition), matmul_dense
    registry   INT_GROUP, BNB_4BIT, BNB_INT8, DENSE; kernels_for(format) -> FormatKernels;
               pick_fast(format, weight, device, x_dtype, prefer=None) -> FastKernel (.prepare once at
               load, .matmul(x, prepared, bias) per step, .numerics says how it differs from the reference)
    fast       triton_int (int-group GEMV / tensor-core GEMM / dequantize), tinygemm (int4, repacked),
               triton_bnb (nf4/fp4), triton_int8 (LLM.int8); imported only when first used (they need Triton)

Each weight class's docstring draws its packed layout (dtypes, shapes, bit order). Every matmul is
y = x @ W.T (+ bias): x (..., cols) in fp16/bf16/fp32, y (..., rows) in x's dtype.
"""

from quantbench.kernels.reference import (
    dequantize_bnb_4bit,
    dequantize_bnb_int8,
    dequantize_int_group,
    matmul_bnb_4bit,
    matmul_bnb_int8,
    matmul_dense,
    matmul_int_group,
)
from quantbench.kernels.registry import (
    BNB_4BIT,
    BNB_INT8,
    DENSE,
    INT_GROUP,
    REGISTRY,
    FastKernel,
    FormatKernels,
    kernels_for,
    pick_fast,
)
from quantbench.kernels.weights import Bnb4bitWeight, BnbInt8Weight, IntGroupWeight

__all__ = [
    "BNB_4BIT",
    "BNB_INT8",
    "DENSE",
    "INT_GROUP",
    "REGISTRY",
    "Bnb4bitWeight",
    "BnbInt8Weight",
    "FastKernel",
    "FormatKernels",
    "IntGroupWeight",
    "dequantize_bnb_4bit",
    "dequantize_bnb_int8",
    "dequantize_int_group",
    "kernels_for",
    "matmul_bnb_4bit",
    "matmul_bnb_int8",
    "matmul_dense",
    "matmul_int_group",
    "pick_fast",
]

"""kernels/: the pure-PyTorch references against independent oracles (bitsandbytes' own dequantizers
and LLM.int8 matmul, compressed-tensors' decompressor, a naive computation from the codes written
here), and each fast kernel against its reference on awkward shapes.

Triton kernels run on this CPU through Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py
before anything imports Triton): tiny shapes only. Thresholds: dequantization is bit-exact; a matmul agrees with
the float64 product of the same weights within bf16 rounding (stated per test).
"""

from __future__ import annotations

import os

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.formats.compressed_tensors import encode_linear
from quantbench.kernels import (
    BNB_4BIT,
    DENSE,
    INT_GROUP,
    Bnb4bitWeight,
    BnbInt8Weight,
    IntGroupWeight,
    dequantize_bnb_4bit,
    dequantize_bnb_int8,
    dequantize_int_group,
    kernels_for,
    matmul_bnb_4bit,
    matmul_bnb_int8,
    matmul_dense,
    matmul_int_group,
    pick_fast,
)
from quantbench.methods.rtn import QuantizedLinear

BF16_ULP = 2.0**-8  # relative spacing of bf16 values (7 stored mantissa bits): rounding is within half

def patch_triton_interpreter_bf16():
    """Triton 3.6's interpreter gets bf16 wrong where the GPU does not: it truncates fp32 -> bf16
    (the GPU rounds to nearest even) and tl.dot multiplies bf16 bit patterns as integers. Patch both
    so interpreted kernels compute what compiled ones do."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_quantbench_bf16_patch", False):
        return
    cast_impl, create_dot = builder.cast_impl, builder.create_dot

    def bf16_bits_to_fp32(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def patched_cast(self, src, dst_type):
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar != tl.bfloat16:
            values = np.ascontiguousarray(src.data).astype(np.float32)
            rounded = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return cast_impl(self, src, dst_type)

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = interpreter.TensorHandle(bf16_bits_to_fp32(a.data), tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = interpreter.TensorHandle(bf16_bits_to_fp32(b.data), tl.float32)
        return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.cast_impl, builder.create_dot = patched_cast, patched_dot
    builder.create_fp_trunc = lambda self, src, dst_type: patched_cast(self, src, dst_type)
    builder._quantbench_bf16_patch = True


def random_int_group(rows: int, cols: int, bits: int, group_size: int, scale_dtype=torch.float16, seed: int = 0):
    """(IntGroupWeight, codes, zeros, scales) from random codes, packed by quantbench's own writer."""
    g = torch.Generator().manual_seed(seed)
    groups = cols // group_size
    codes = torch.randint(0, 2**bits, (rows, cols), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 2**bits, (rows, groups), generator=g, dtype=torch.uint8)
    scales = (torch.rand(rows, groups, generator=g) * 0.02 + 0.001).to(scale_dtype)
    tensors = encode_linear(QuantizedLinear(codes, scales, zeros, bits, group_size, g_idx=None))
    return IntGroupWeight.from_stored(tensors, bits, group_size), codes, zeros, scales


def naive_int_group(codes, zeros, scales, group_size):
    """W from the codes, one element at a time in float64 (exact: (q - z) * scale fits fp32)."""
    rows, cols = codes.shape
    W = torch.empty(rows, cols, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            W[r, c] = (int(codes[r, c]) - int(zeros[r, c // group_size])) * float(scales[r, c // group_size])
    return W


def assert_matmul_close(y, x, W, bias=None, weight_rounding=0.0):
    """y vs x @ W.T in float64: within bf16 rounding of the output (half an ulp of |y|, one ulp for
    slack) plus, where a kernel rounds each weight to x's dtype, that rounding times sum |x| |W|."""
    exact = x.double() @ W.double().T
    if bias is not None:
        exact = exact + bias.double()
    magnitude = x.double().abs() @ W.double().abs().T
    tol = BF16_ULP * exact.abs() + weight_rounding * magnitude + 1e-6 * magnitude
    err = (y.double() - exact).abs()
    assert (err <= tol).all(), f"max error {err.max():.3g}, worst error/tolerance {(err / tol).max():.3g}"


# ---------------------------------------------------------------------------------------------------
# references vs oracles


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows,cols,group_size", [(5, 64, 32), (3, 96, 32), (13, 128, 64)])
def test_int_group_reference_matches_naive_and_compressed_tensors(bits, rows, cols, group_size):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weight, codes, zeros, scales = random_int_group(rows, cols, bits, group_size, seed=bits)
    ours = dequantize_int_group(weight)
    assert torch.equal(ours.double(), naive_int_group(codes, zeros, scales, group_size))
    tensors = {"weight_packed": weight.packed, "weight_scale": weight.scale, "weight_zero_point": weight.zero_point, "weight_shape": torch.tensor([rows, cols])}
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=bits, symmetric=False, strategy="group", group_size=group_size))
    library = PackedQuantizationCompressor.decompress(tensors, scheme)["weight"]
    # the library multiplies in the scale's dtype: our fp32 product, rounded to fp16, bit for bit
    assert torch.equal(library, dequantize_int_group(weight, torch.float16))


def test_int_group_reference_matmul_and_bad_layouts():
    weight, codes, zeros, scales = random_int_group(7, 64, 4, 32)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    bias = torch.randn(7, dtype=torch.bfloat16)
    y = matmul_int_group(x, weight, bias)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 7)
    assert_matmul_close(y, x, naive_int_group(codes, zeros, scales, 32), bias)
    with pytest.raises(QuantbenchError, match="weight_packed must be int32"):
        IntGroupWeight(weight.packed[:, :-1].contiguous(), weight.scale, weight.zero_point, 7, 64, 4, 32)
    with pytest.raises(QuantbenchError, match="does not tile"):
        IntGroupWeight(weight.packed, weight.scale, weight.zero_point, 7, 64, 4, 48)


def bnb_quantized(rows, cols, quant_type, double_quant, seed=0):
    """(Bnb4bitWeight, bitsandbytes' own dequantized W) for a random weight quantized by bitsandbytes on CPU."""
    import bitsandbytes.functional as F

    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    W[0, 0] = 0.0  # an exact zero somewhere, and a block of constant sign below
    packed, state = F.quantize_4bit(W, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    oracle = F.dequantize_4bit(packed, state)
    if double_quant:
        weight = Bnb4bitWeight(
            packed, state.absmax, state.code, rows, cols, quant_type, state.blocksize,
            nested_absmax=state.state2.absmax, nested_code=state.state2.code, nested_offset=state.offset, nested_blocksize=state.state2.blocksize,
        )  # fmt: skip
    else:
        weight = Bnb4bitWeight(packed, state.absmax, state.code, rows, cols, quant_type, state.blocksize)
    return weight, oracle


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("rows,cols", [(8, 64), (5, 100), (3, 33)])
def test_bnb_4bit_reference_matches_bitsandbytes(quant_type, double_quant, rows, cols):
    weight, oracle = bnb_quantized(rows, cols, quant_type, double_quant)
    assert torch.equal(dequantize_bnb_4bit(weight), oracle.float())
    x = torch.randn(3, cols, dtype=torch.bfloat16)
    assert_matmul_close(matmul_bnb_4bit(x, weight), x, oracle)


def test_bnb_4bit_double_quant_needs_its_state():
    weight, _ = bnb_quantized(4, 128, "nf4", True)
    with pytest.raises(QuantbenchError, match="nested_quant_map"):
        Bnb4bitWeight(weight.packed, weight.absmax, weight.code, 4, 128, "nf4", nested_absmax=weight.nested_absmax)


def bnb_int8(rows, cols, seed=0):
    import bitsandbytes.functional as F

    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    CB, SCB, _ = F.int8_vectorwise_quant(W.half())
    return CB, SCB


def bitsandbytes_int8_matmul(x, CB, SCB, threshold, bias=None):
    import bitsandbytes as bnb

    state = bnb.MatmulLtState()
    state.CB, state.SCB, state.threshold, state.has_fp16_weights = CB, SCB, threshold, False
    state.is_training = False  # as Linear8bitLt in eval mode: MatMul8bitLt, the LLM.int8 path
    with torch.no_grad():
        return bnb.matmul(x.clone(), CB, state=state, threshold=threshold, bias=bias)


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("threshold", [6.0, 0.0])
def test_llm_int8_reference_matches_bitsandbytes(tokens, threshold):
    import bitsandbytes.functional as F

    CB, SCB = bnb_int8(24, 80)
    weight = BnbInt8Weight(CB, SCB, threshold)
    assert torch.equal(dequantize_bnb_int8(weight), F.int8_vectorwise_dequant(CB, SCB))
    x = torch.randn(tokens, 80, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    x[:, 7] = 40.0  # an outlier column (|x| >= 6)
    x[0, 50] = -7.5  # and an outlier in one row only: its whole column goes to the 16-bit path
    bias = torch.randn(24).to(torch.bfloat16)
    ours = matmul_bnb_int8(x, weight, bias)
    theirs = bitsandbytes_int8_matmul(x, CB, SCB, threshold, bias)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    # Both round the int8 part to bf16 before adding the outlier part; their CPU path's dequant constant
    # differs from 1/127^2 by 1.8e-5 relative: a difference is at most an ulp of those bf16 terms.
    magnitude = x.double().abs() @ dequantize_bnb_int8(weight).double().abs().T + bias.double().abs()
    assert ((ours.double() - theirs.double()).abs() <= 2 * BF16_ULP * magnitude).all()  # an ulp is <= 2^-7 relative
    # the decomposition matters: without it the outliers coarsen every row's int8 grid
    if threshold > 0:
        exact = x.double() @ dequantize_bnb_int8(weight).double().T + bias.double()
        plain = matmul_bnb_int8(x, BnbInt8Weight(CB, SCB, 0.0), bias)
        assert (ours.double() - exact).abs().mean() < 0.25 * (plain.double() - exact).abs().mean()


def test_llm_int8_keeps_outliers_in_16_bits():
    """With threshold 6 the outlier column's contribution is x * dequantized weight, not int8-rounded."""
    CB, SCB = bnb_int8(4, 16)
    x = torch.zeros(1, 16, dtype=torch.float16)
    x[0, 3] = 100.0  # the only nonzero input: an outlier
    y = matmul_bnb_int8(x, BnbInt8Weight(CB, SCB, 6.0))
    expected = (100.0 * (CB[:, 3].float() * SCB * (1.0 / 127)).half().float()).half()
    assert torch.equal(y[0], expected)


def test_dense_reference():
    W = torch.randn(6, 10, dtype=torch.bfloat16)
    x = torch.randn(2, 10, dtype=torch.bfloat16)
    assert_matmul_close(matmul_dense(x, W), x, W)
    assert kernels_for(DENSE).fast[0].name == "torch-linear"


def test_registry_names_a_reason_when_no_fast_kernel_fits():
    weight, *_ = random_int_group(4, 64, 4, 32)
    with pytest.raises(QuantbenchError, match="no fast kernel"):
        pick_fast(INT_GROUP, weight, "cpu", torch.bfloat16)
    with pytest.raises(QuantbenchError, match="no kernels for weight format"):
        kernels_for("gguf-q4_k")
    assert kernels_for(BNB_4BIT).reference_dequantize is dequantize_bnb_4bit


# ---------------------------------------------------------------------------------------------------
# fast kernels vs references (Triton's interpreter on CPU; compiled on CUDA)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_kernels():
    if os.environ.get("TRITON_INTERPRET") == "1":
        patch_triton_interpreter_bf16()
    from quantbench.kernels import triton_bnb, triton_int, triton_int8

    return triton_int, triton_bnb, triton_int8


def on_device(weight):
    from dataclasses import fields, replace

    return replace(weight, **{f.name: getattr(weight, f.name).to(DEVICE) for f in fields(weight) if isinstance(getattr(weight, f.name), torch.Tensor)})


@pytest.mark.parametrize(
    "bits,rows,cols,group_size",
    [(4, 37, 256, 128), (8, 37, 256, 128), (2, 5, 64, 32), (3, 5, 64, 32)],
)
def test_triton_int_matches_reference(triton_kernels, bits, rows, cols, group_size):
    triton_int = triton_kernels[0]
    weight, codes, zeros, scales = random_int_group(rows, cols, bits, group_size, scale_dtype=torch.bfloat16, seed=bits)
    weight = on_device(weight)
    W = naive_int_group(codes, zeros, scales, group_size)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(triton_int.dequantize(weight, dtype).cpu(), dequantize_int_group(weight, dtype).cpu())
    bias = torch.randn(rows, dtype=torch.bfloat16)
    for batch in (1, 3):  # GEMV (exact fp32 weights), then the tensor-core kernel (weights rounded to bf16)
        x = torch.randn(batch, cols, dtype=torch.bfloat16)
        y = triton_int.matmul(x.to(DEVICE), weight, bias.to(DEVICE)).cpu()
        assert_matmul_close(y, x, W, bias, weight_rounding=0.0 if batch == 1 else BF16_ULP)
    if bits == 4:  # split-K, batch 32, an fp32 input (exact fp32 dot)
        x = torch.randn(32, cols, dtype=torch.bfloat16)
        y = triton_int.matmul(x.to(DEVICE), weight, gemm=triton_int.GemmConfig(block_n=16, split_k=2)).cpu()
        assert_matmul_close(y, x, W, weight_rounding=BF16_ULP)
        x1 = x[:1]
        y = triton_int.matmul(x1.to(DEVICE), weight, gemv=triton_int.GemvConfig(block_n=16, split_k=2)).cpu()
        assert_matmul_close(y, x1, W)
        xf = torch.randn(2, cols)
        assert_matmul_close(triton_int.matmul(xf.to(DEVICE), weight).cpu(), xf, W)


def test_triton_int_refuses_groups_smaller_than_a_packed_unit(triton_kernels):
    weight, *_ = random_int_group(4, 64, 3, 16)
    with pytest.raises(QuantbenchError, match="not a multiple of 32"):
        triton_kernels[0].matmul(torch.randn(1, 64), weight)
    with pytest.raises(QuantbenchError, match="triton-int-group: group size 16.*tinygemm-int4: tinygemm is int4 only"):
        pick_fast(INT_GROUP, weight, "cuda", torch.bfloat16)
    int4 = random_int_group(8, 128, 4, 32)[0]
    assert pick_fast(INT_GROUP, int4, "cuda", torch.bfloat16).name == "triton-int-group"
    assert pick_fast(INT_GROUP, int4, "cuda", torch.bfloat16, prefer="tinygemm-int4").name == "tinygemm-int4"
    with pytest.raises(QuantbenchError, match="tinygemm takes bf16"):
        pick_fast(INT_GROUP, int4, "cuda", torch.float16, prefer="tinygemm-int4")


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", False), ("fp4", True)])
@pytest.mark.parametrize("rows,cols", [(37, 256), (5, 100)])
def test_triton_bnb_4bit_matches_reference(triton_kernels, quant_type, double_quant, rows, cols):
    triton_bnb = triton_kernels[1]
    weight, oracle = bnb_quantized(rows, cols, quant_type, double_quant)
    weight = on_device(weight)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(triton_bnb.dequantize(weight, dtype).cpu(), oracle.to(dtype))
    aligned = triton_bnb.row_aligned(weight)  # (5, 100): blocks run across rows, the generic kernel
    for batch in (1, 3):
        x = torch.randn(batch, cols, dtype=torch.bfloat16)
        bias = torch.randn(rows, dtype=torch.bfloat16)
        y = triton_bnb.matmul(x.to(DEVICE), weight, bias.to(DEVICE)).cpu()
        assert_matmul_close(y, x, oracle, bias, weight_rounding=BF16_ULP if (aligned and batch > 1) else 0.0)


@pytest.mark.parametrize("threshold", [6.0, 0.0])
def test_triton_llm_int8_matches_reference(triton_kernels, threshold):
    triton_int8 = triton_kernels[2]
    CB, SCB = bnb_int8(37, 200)
    weight = BnbInt8Weight(CB, SCB, threshold)
    for batch in (1, 3):
        x = torch.randn(batch, 200, generator=torch.Generator().manual_seed(batch)).to(torch.bfloat16)
        x[:, 7] = 40.0
        x[0, 150] = -7.5
        bias = torch.randn(37).to(torch.bfloat16)
        ours = triton_int8.matmul(x.to(DEVICE), on_device(weight), bias.to(DEVICE)).cpu()
        ref = matmul_bnb_int8(x, weight, bias)
        if threshold == 0:  # no outlier part: the same integers and the same fp32 steps, bit for bit
            assert torch.equal(ours, ref)
        else:  # the outlier columns' weights are not rounded to bf16 first: within an ulp of the terms
            magnitude = x.double().abs() @ dequantize_bnb_int8(weight).double().abs().T + bias.double().abs()
            assert ((ours.double() - ref.double()).abs() <= 2 * BF16_ULP * magnitude).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="tinygemm (_weight_int4pack_mm) runs on CUDA only")
def test_tinygemm_matches_reference():
    from quantbench.kernels import tinygemm

    weight, codes, zeros, scales = random_int_group(64, 256, 4, 128)
    W = naive_int_group(codes, zeros, scales, 128)
    prepared = tinygemm.repack(on_device(weight))
    assert prepared.resident_bytes() <= 1.05 * weight.stored_bytes()
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    # scales rounded to bf16 and the zero folded into a bf16 offset: about 2^-8 of each weight's scale x 16
    assert_matmul_close(tinygemm.matmul(x.cuda(), prepared).cpu(), x, W, weight_rounding=8 * BF16_ULP)

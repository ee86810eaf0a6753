"""compressed-tensors artifacts: our packing vs the compressed-tensors library, and the recipes end to
end on the tiny Llama: plain transformers reloads the folder on CPU, its weights are our decoded
weights, its logits match a model carrying our dequantized weights, and the size plan is the file."""

from __future__ import annotations

import json

import pytest
import torch

import compressed_tensors

from quantbench.arch import LINEAR, ArchSpec  # noqa: E402
from quantbench.errors import QuantbenchError  # noqa: E402
from quantbench.formats.compressed_tensors import (  # noqa: E402
    decode_linear,
    encode_linear,
    model_group_size,
    pack_int32,
    read_linears,
    unpack_int32,
)
from quantbench.methods.rtn import QuantizedLinear, RTNConfig, rtn_quantize  # noqa: E402


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(5, 64), (3, 77), (9, 31)])
def test_pack_int32_matches_compressed_tensors(bits, shape):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.uint8)
    ours = pack_int32(codes, bits)
    signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)  # the library's signed view
    assert torch.equal(ours, pack_to_int32(signed, bits))
    assert torch.equal(unpack_int32(ours, bits, shape[1]), codes)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size(shape)), signed)


def test_encoded_linear_decodes_like_the_library():
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    W = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    q = rtn_quantize(W, RTNConfig(bits=3, group_size=32))
    tensors = encode_linear(q)
    ours = decode_linear(tensors, 3, 32)
    torch.testing.assert_close(ours, q.dequantize(), rtol=0, atol=0)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=3, symmetric=False, strategy="group", group_size=32))
    library = PackedQuantizationCompressor.decompress(dict(tensors), scheme)["weight"]
    # the library multiplies in the scale's dtype (fp16): our fp32 product rounded to fp16
    torch.testing.assert_close(library.float(), ours.half().float(), rtol=0, atol=0)


def test_encode_refuses_g_idx_and_ragged_groups():
    q = rtn_quantize(torch.randn(4, 40), RTNConfig(bits=4, group_size=32))
    with pytest.raises(QuantbenchError, match="ragged"):
        encode_linear(q)
    q = rtn_quantize(torch.randn(4, 64), RTNConfig(bits=4, group_size=32))
    with_g_idx = QuantizedLinear(q.codes, q.scales, q.zeros, 4, 32, g_idx=torch.zeros(64, dtype=torch.int32))
    with pytest.raises(QuantbenchError, match="g_idx"):
        encode_linear(with_g_idx)


def test_model_group_size():
    assert model_group_size(128, [4096, 14336]) == 128
    assert model_group_size(128, [576, 1536]) == 64  # SmolLM2-135M
    with pytest.raises(QuantbenchError, match="group size"):
        model_group_size(128, [100])


def calibration_job(tiny_model, tmp_path, samples=6, length=64, **options):
    from transformers import AutoTokenizer

    from conftest import tiny_text
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import calibration_samples, split_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(tiny_text()[:60_000])["input_ids"]
    splits = split_tokens(ids, 0.5)
    source = resolve_model(str(tiny_model))
    job = QuantizeJob(
        source=source,
        out_dir=tmp_path / "artifact",
        device="cpu",
        calibration=lambda: calibration_samples(splits.calibration, samples, length),
        options={"calibration_samples": samples, "calibration_length": length, **options},
    )
    return job, splits.evaluation


@pytest.mark.parametrize("method", ["rtn-w4g32", "gptq-w4g128", "gptq-w3g128-act", "gptq-w8g64", "awq-w4g128"])
def test_recipe_artifact_reloads_in_plain_transformers(method, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from quantbench.recipes import get_recipe

    recipe = get_recipe(method)
    job, evaluation = calibration_job(tiny_model, tmp_path)
    meta = recipe.quantize(job)
    out = job.out_dir
    json.dumps(meta)  # metadata must be JSON

    # plan == stored bytes: the file is the planned tensor bytes after its JSON header
    arch = ArchSpec.from_config(job.source.config())
    plan = sum(recipe.plan_tensor(t, arch).stored_bytes for t in arch.tensors())
    assert plan == meta["stored_tensor_bytes"]
    data = (out / "model.safetensors").read_bytes()
    assert len(data) - 8 - int.from_bytes(data[:8], "little") == plan

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
    ours = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    decoded, config = read_linears(out)
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == recipe.bits
    assert len(decoded) == sum(t.role == LINEAR for t in arch.tensors())
    state = reloaded.state_dict()
    with torch.no_grad():
        for module, W in decoded.items():
            # transformers dequantizes in the scale dtype (fp16): our value rounded to fp16
            assert torch.equal(state[module + ".weight"], W.half().float()), module
            ours.get_submodule(module).weight.copy_(W)
        for name, tensor in ours.state_dict().items():
            if name.removesuffix(".weight") not in decoded:
                tensor.copy_(state[name])  # norms (AWQ folds scales into them), embeddings, lm_head
        ids = torch.tensor([evaluation[:128]])
        a, b = reloaded(ids).logits, ours(ids).logits
    assert (a - b).abs().max() < 1e-2 * b.abs().max()

    if recipe.needs_calibration:
        assert meta["calibration"] == {**meta["calibration"], "samples": 6, "length": 64, "requested_samples": 6, "split": "calibration"}
        assert meta["layer_errors"]["mean"] < meta["layer_errors"]["mean_rtn"]
    assert meta["group_size"] == min(recipe.group_size, 64)  # tiny Llama: hidden 64


def test_quantbench_runtime_opens_the_artifact(tiny_model, tmp_path):
    from quantbench.recipes import get_recipe

    recipe = get_recipe("gptq-w4g32")
    job, evaluation = calibration_job(tiny_model, tmp_path, samples=4, length=32)
    recipe.quantize(job)
    runtime = recipe.open(job.out_dir, "cpu")
    try:
        logits = runtime.logits(evaluation[:40])
        assert logits.shape == (40, 512) and torch.isfinite(logits).all()
    finally:
        runtime.close()


def test_calibrated_recipe_without_samples_is_a_clear_error(tiny_model, tmp_path):
    from quantbench.recipes import get_recipe

    job, _ = calibration_job(tiny_model, tmp_path, samples=0)
    with pytest.raises(QuantbenchError, match="calibration"):
        get_recipe("gptq-w4g128").quantize(job)

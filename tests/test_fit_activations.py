"""fit's activation-rounding costs: the roundings against gguf's quantizer and a naive float64 reference,
and the summed per-tensor costs against llama.cpp itself on a model whose weights it stores losslessly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.fit.activations import ACTIVATION_TYPE, activation_type, round_activations, with_activation_costs


def _rows(seed=0, rows=6, cols=512):
    x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * np.float32(3.0)
    x[1, :256] = 0.0  # an all-zero block
    x[2, 7] = -40.0  # a negative value of largest magnitude
    return x


def test_q8_0_rounding_is_ggufs():
    import gguf
    from gguf import quants

    x = _rows()
    oracle = quants.dequantize(quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    got = round_activations(torch.from_numpy(x), "Q8_0").numpy()
    assert np.array_equal(got, oracle)
    assert np.array_equal(round_activations(torch.from_numpy(x), "Q8_1").numpy(), oracle)  # Q8_1 rounds as Q8_0


def test_q8_k_rounding_matches_a_naive_reference():
    """quantize_row_q8_K_ref, written out block by block in float64: the signed value of largest
    magnitude maps to -127, values to round(x * -127 / max) capped at 127, scale 1/iscale in fp32."""
    x = _rows(1)
    want = np.zeros_like(x, dtype=np.float64)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 256):
            block = x[r, b : b + 256].astype(np.float64)
            top = block[np.argmax(np.abs(block))]
            if top == 0:
                continue
            iscale = -127.0 / top
            want[r, b : b + 256] = np.minimum(np.rint(block * iscale), 127) / iscale
    got = round_activations(torch.from_numpy(x), "Q8_K").numpy()
    step = np.abs(x).reshape(x.shape[0], -1, 256).max(-1, keepdims=True) / 127
    assert np.abs(got - want).max() < 1e-5 * np.abs(x).max()  # float32 vs float64 arithmetic only
    err = np.abs(got - x).reshape(x.shape[0], -1, 256)
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all() and (err.max(-1) > 0).sum() >= 3  # real rounding, at most half a step
    assert got[2, 7] == pytest.approx(-40.0)  # the block maximum survives exactly (up to fp32)
    assert not got[1, :256].any()


def test_f16_rounding_and_errors():
    x = torch.from_numpy(_rows(2))
    assert torch.equal(round_activations(x, "F16"), x.half().float())
    assert torch.equal(round_activations(x, "F32"), x)
    with pytest.raises(QuantbenchError, match="whole Q8_K blocks"):
        round_activations(x[:, :128], "Q8_K")


def test_every_fit_type_has_its_activation_type():
    from quantbench.fit.candidates import DEFAULT_TYPES

    assert {activation_type(t) for t in DEFAULT_TYPES} <= {"Q8_K", "Q8_0", "Q8_1", "F16"}
    assert [t for t in DEFAULT_TYPES if ACTIVATION_TYPE[t] == "Q8_1"] == ["Q4_1", "Q5_1"]
    with pytest.raises(QuantbenchError, match="activation type"):
        activation_type("Q9_9")
    cost = with_activation_costs({"w": {"Q4_K": 1.0, "Q4_1": 2.0}}, {"w": {"Q8_K": 0.5, "Q8_1": 0.25}})
    assert cost == {"w": {"Q4_K": 1.5, "Q4_1": 2.25}}


def test_summed_costs_predict_llama_cpp_on_lossless_weights(tmp_path):
    """Weights snapped to the Q8_0 grid, so llama.cpp stores them exactly; with an F32 KV cache and no flash
    attention its only error left is rounding each matmul's input to Q8_0. The per-tensor costs, summed,
    must predict what llama.cpp measures; the F32 file of the same weights shows the rest is exact."""
    import gguf
    from gguf import quants
    from transformers import AutoModelForCausalLM

    from conftest import build_tiny_llama
    from quantbench.arch import ArchSpec
    from quantbench.eval.divergence import token_kld
    from quantbench.fit.activations import measure_activation_costs
    from quantbench.fit.candidates import tensor_candidates
    from quantbench.fit.sensitivity import SensitivityRun, SensitivitySettings
    from quantbench.formats.gguf_writer import write_gguf
    from quantbench.runtimes.llamacpp import LlamaCppRuntime

    source = build_tiny_llama(tmp_path / "src", hidden=64, layers=2, ffn=128, vocab=512)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(quants.dequantize(quants.quantize(p.numpy(), q8), q8)))
    grid = tmp_path / "grid"
    model.save_pretrained(grid)
    for f in source.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (grid / f.name).write_bytes(f.read_bytes())
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 500, 96)]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)

    def llama_cpp_kld(path):
        runtime = LlamaCppRuntime(path, kv_cache_type="F32", flash_attention="off")
        try:
            return float(token_kld(ref, torch.log_softmax(runtime.logits(ids).float(), -1)).double().mean())
        finally:
            runtime.close()

    f32_file = write_gguf(grid, tmp_path / "f32.gguf", "F32").path
    q8_file = write_gguf(grid, tmp_path / "q8.gguf", "Q8_0").path
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(q8_file)).tensors if len(t.shape) == 2} == {"Q8_0"}
    measured, exact = llama_cpp_kld(q8_file), llama_cpp_kld(f32_file)
    arch = ArchSpec.from_config(json.loads((grid / "config.json").read_text()))
    run = SensitivityRun(grid, arch, [ids, ids], SensitivitySettings(direct_tokens=len(ids)))
    costs = measure_activation_costs(run, tensor_candidates(arch, ("Q8_0", "F16")), run.reference())
    predicted = sum(per["Q8_0"] for per in costs.values())
    assert costs["token_embd.weight"]["Q8_0"] == 0.0  # untied: read by row lookup, never multiplied
    assert measured > 1000 * exact  # the F32 file is exact: what the Q8_0 file adds is real
    assert 0.8 < predicted / measured < 1.25, (predicted, measured)
    assert sum(per["F16"] for per in costs.values()) < predicted / 100  # fp16 inputs: 11 bits, not 8

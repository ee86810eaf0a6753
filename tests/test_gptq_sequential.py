"""The layer-by-layer driver replays exactly what the model computes, and quantizes every linear once."""

from __future__ import annotations

import pytest
import torch

from quantbench.arch import FAMILIES, LAYER_LINEARS
from quantbench.methods import sequential
from quantbench.methods.gptq import GPTQConfig


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_input_groups_cover_the_arch_table_in_forward_order(model_type):
    family = FAMILIES[model_type]
    assert [name for group in family.input_groups for name in group] == [hf for hf, _, _ in family.linears]
    assert len(family.scale_parents) == len(family.input_groups)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_captured_inputs_and_replayed_layers_match_the_model(tiny_model, attention):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention).eval()
    g = torch.Generator().manual_seed(0)
    samples = torch.randint(3, 512, (5, 24), generator=g).tolist()
    inputs = sequential.capture_layer0_inputs(model, samples, "cpu", batch_size=2)  # chunks of 2, 2, 1
    assert [h.shape[0] for h in inputs.hidden] == [2, 2, 1]
    with torch.no_grad():
        expected = model(torch.tensor(samples), output_hidden_states=True).hidden_states
    torch.testing.assert_close(torch.cat(inputs.hidden), expected[0])
    out = sequential.run_layer(sequential.decoder_layers(model)[0], inputs)
    torch.testing.assert_close(torch.cat(out.hidden), expected[1], rtol=1e-5, atol=1e-5)


def test_gptq_driver_quantizes_every_linear_and_feeds_quantized_outputs(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    original = {n: p.clone() for n, p in model.named_parameters()}
    samples = torch.randint(3, 512, (4, 32), generator=torch.Generator().manual_seed(1)).tolist()
    inputs = sequential.capture_layer0_inputs(model, samples, "cpu", batch_size=4)
    config = GPTQConfig(bits=4, group_size=32)
    seen = []

    def quantize(layer, layer_inputs, prefix, result):
        seen.append(torch.cat(layer_inputs.hidden).clone())
        sequential.gptq_layer(layer, layer_inputs, prefix, FAMILIES["llama"], lambda name, W: config, result)

    result = sequential.quantize_layers(sequential.decoder_layers(model), inputs, "cpu", quantize, "model.layers")
    assert sorted(result.linears) == sorted(f"model.layers.{i}.{hf}" for i in range(2) for hf, _, _ in LAYER_LINEARS)
    for name, q in result.linears.items():
        weight = model.get_submodule(name).weight
        assert torch.equal(weight, q.dequantize())  # the model now carries the quantized weights
        assert not torch.equal(weight, original[name + ".weight"])
        assert result.errors[name]["error"] < result.errors[name]["rtn_error"]
    # layer 1 was calibrated on layer 0's QUANTIZED outputs
    with torch.no_grad():
        expected = model(torch.tensor(samples), output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(seen[1], expected, rtol=1e-5, atol=1e-5)

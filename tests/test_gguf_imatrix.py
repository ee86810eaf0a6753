"""Importance matrix against a direct float64 computation of the activations it summarises."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.methods.imatrix import ImatrixConfig, collect_imatrix


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (17, 40, 9)]
    return model, sequences


def rms_norm64(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


def test_first_layer_inputs_match_direct_float64(tiny):
    """Layer 0's q/k/v read input_layernorm(embedding): the mean of its square, per column, over all
    66 tokens of the three sequences, computed here by hand from the definition."""
    model, sequences = tiny
    imatrix = collect_imatrix(model, sequences)
    layer0 = model.model.layers[0]
    xs = [rms_norm64(model.model.embed_tokens.weight[s], layer0.input_layernorm.weight, model.config.rms_norm_eps) for s in sequences]
    x = torch.cat(xs)  # (66, hidden)
    expected = (x * x).mean(0)
    for proj in ("q_proj", "k_proj", "v_proj"):
        got = imatrix.values[f"model.layers.0.self_attn.{proj}.weight"]
        assert got.dtype == torch.float32 and got.shape == (64,)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    assert imatrix.tokens == 66 and imatrix.sequences == 3


def test_every_linear_but_the_output_by_default(tiny):
    model, sequences = tiny
    imatrix = collect_imatrix(model, sequences)
    assert len(imatrix.values) == 7 * 3 and "lm_head.weight" not in imatrix.values  # llama-imatrix's default
    for i in range(3):
        p = f"model.layers.{i}."
        # gate and up read the same input; down reads the FFN's inner width
        torch.testing.assert_close(imatrix.values[p + "mlp.gate_proj.weight"], imatrix.values[p + "mlp.up_proj.weight"])
        assert imatrix.values[p + "mlp.down_proj.weight"].shape == (128,)
        assert (imatrix.values[p + "self_attn.o_proj.weight"] > 0).all()


def test_output_projection_when_asked(tiny):
    """lm_head reads the final norm's output, which transformers returns as the last hidden state."""
    model, sequences = tiny
    imatrix = collect_imatrix(model, sequences, ImatrixConfig(include_lm_head=True))
    hidden = []
    with torch.no_grad():
        for s in sequences:
            hidden.append(model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0].double())
    h = torch.cat(hidden)
    torch.testing.assert_close(imatrix.values["lm_head.weight"].double(), (h * h).mean(0), rtol=1e-5, atol=0)


def test_no_calibration_text_is_an_error(tiny):
    model, _ = tiny
    with pytest.raises(QuantbenchError, match="calibration"):
        collect_imatrix(model, [])

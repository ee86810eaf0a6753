"""Streaming bitsandbytes writes the artifact transformers' quantize-on-load + save_pretrained writes:
every tensor equal, and the reloaded models give equal logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from quantbench.device import best_half_dtype
from quantbench.recipes import get_recipe
from quantbench.streaming.bnb import quantize_bnb_streaming


@pytest.mark.parametrize("method", ["bnb-nf4", "bnb-nf4-dq", "bnb-int8"])
def test_streaming_bnb_equals_transformers(tiny_model, tmp_path, method):
    from transformers import AutoModelForCausalLM

    recipe = get_recipe(method)
    s = recipe.settings
    dtype = best_half_dtype("cpu")
    whole = tmp_path / "whole"  # transformers' own path: quantize while loading, then save_pretrained
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype, device_map="cpu", quantization_config=recipe.quantization_config(dtype)).save_pretrained(whole)
    stream = tmp_path / "stream"
    quantize_bnb_streaming(tiny_model, stream, s.bits, s.quant_type, s.double_quant, dtype, recipe.quantization_config(dtype).to_dict(), "cpu")
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(stream / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    ids = torch.arange(1, 33)[None]
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(p, device_map="cpu")(ids).logits for p in (whole, stream)]
    assert torch.equal(logits[0], logits[1])

"""Streaming GPTQ/AWQ (weights read layer by layer from the checkpoint) write the very artifact the
whole-model path writes (the model loaded whole, methods.sequential's loop, the format's writer)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from quantbench.arch import FAMILIES, LINEAR, ArchSpec
from quantbench.formats.compressed_tensors import write_checkpoint
from quantbench.methods import sequential
from quantbench.methods.awq import AWQConfig
from quantbench.methods.gptq import GPTQConfig
from quantbench.streaming.intgrid import quantize_layers_streaming


def _layer_fn(method: str):
    if method == "gptq":
        config = GPTQConfig(bits=4, group_size=32, scale_dtype="float16")
        return lambda layer, inputs, prefix, result: sequential.gptq_layer(layer, inputs, prefix, FAMILIES['llama'], lambda n, W: config, result, True)
    config = AWQConfig(bits=4, group_size=32, scale_dtype="float16")
    return lambda layer, inputs, prefix, result: sequential.awq_layer(layer, inputs, prefix, FAMILIES['llama'], lambda n, W: config, result)


def _whole_model(src, out, samples, method):
    from transformers import AutoModelForCausalLM

    hf_config = json.loads((src / "config.json").read_text())
    arch = ArchSpec.from_config(hf_config)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    inputs = sequential.capture_layer0_inputs(model, samples, "cpu", 4)
    result = sequential.quantize_layers(sequential.decoder_layers(model), inputs, "cpu", _layer_fn(method), "model.layers")
    state = model.state_dict()
    dense = {t.name: state[t.name] for t in arch.tensors() if t.role != LINEAR}
    write_checkpoint(out, hf_config, dense, result.linears, torch.float16, ignore=["lm_head"])


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_streaming_equals_whole_model(tiny_model, tmp_path, method):
    samples = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0)).tolist()
    _whole_model(tiny_model, tmp_path / "whole", samples, method)
    streamed = quantize_layers_streaming(tiny_model, tmp_path / "stream", samples, _layer_fn(method), 4, 32, "float16", "cpu", 4, max_shard_bytes=50_000)
    assert len(streamed.files) > 1  # several shards, and an index
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    stream = {}
    for f in streamed.files:
        stream.update(load_file(str(f)))
    assert sorted(whole) == sorted(stream)
    for name in whole:
        assert torch.equal(whole[name], stream[name]), name
    assert streamed.errors and all(e["error"] >= 0 for e in streamed.errors.values())
    assert streamed.memory.samples > 0

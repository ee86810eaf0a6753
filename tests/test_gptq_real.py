"""Real-model tier for GPTQ/RTN: SmolLM2-135M (quantbench's default) on its calibration split.

REFERENCE s.5: SmolLM2's weights sit on a Q4_1 g32 grid, so group 32 is never used to judge quality.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    """GPTQ's column loop is many small ops: on a busy 2-core machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default_model():
    from transformers import AutoTokenizer

    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import load_text, split_tokens

    source = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    ids = tokenizer(load_text(None).content[:300_000])["input_ids"]
    return source, split_tokens(ids, 0.25)


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_layer_error_at_most_rtn_for_every_linear(default_model, bits):
    from transformers import AutoModelForCausalLM

    from quantbench.methods import sequential
    from quantbench.methods.gptq import GPTQConfig
    from quantbench.sources.text import calibration_samples

    source, splits = default_model
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    samples = calibration_samples(splits.calibration, 16, 256)
    inputs = sequential.capture_layer0_inputs(model, samples, "cpu", batch_size=8)
    config = GPTQConfig(bits=bits, group_size=128)  # 576 columns: four groups of 128 and one of 64
    layers = list(sequential.decoder_layers(model))[:2]
    family = sequential.model_family(model)
    result = sequential.quantize_layers(
        layers, inputs, "cpu", lambda layer, x, prefix, res: sequential.gptq_layer(layer, x, prefix, family, lambda n, W: config, res),
        family.layers,
    )
    assert len(result.errors) == 2 * 7
    for name, e in result.errors.items():
        assert e["error"] <= e["rtn_error"], name
    mean = sum(e["error"] for e in result.errors.values()) / len(result.errors)
    mean_rtn = sum(e["rtn_error"] for e in result.errors.values()) / len(result.errors)
    assert mean < 0.6 * mean_rtn  # measured about 0.3 (4-bit) here


def test_rtn_artifact_of_default_model_reloads_with_matching_logits(default_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from quantbench.arch import ArchSpec
    from quantbench.formats.compressed_tensors import read_linears
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob

    source, splits = default_model
    recipe = get_recipe("rtn-w4g128")
    job = QuantizeJob(source=source, out_dir=tmp_path / "rtn", device="cpu")
    meta = recipe.quantize(job)
    assert meta["group_size"] == 64 and meta["requested_group_size"] == 128  # 576 % 128 != 0
    arch = ArchSpec.from_config(source.config())
    plan = sum(recipe.plan_tensor(t, arch).stored_bytes for t in arch.tensors())
    size = (job.out_dir / "model.safetensors").stat().st_size
    assert plan == meta["stored_tensor_bytes"] and abs(size - plan) / plan < 0.005

    reloaded = AutoModelForCausalLM.from_pretrained(job.out_dir, dtype=torch.float32, device_map="cpu").eval()
    ours = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    decoded, _ = read_linears(job.out_dir)
    with torch.no_grad():
        for module, W in decoded.items():
            ours.get_submodule(module).weight.copy_(W)
        ours.model.embed_tokens.weight.copy_(ours.model.embed_tokens.weight.half().float())  # stored as fp16
        ids = torch.tensor([splits.evaluation[:256]])
        a, b = reloaded(ids).logits[0], ours(ids).logits[0]
    # transformers multiplies in fp16 (2^-11 relative per weight); logits agree to well under 1%
    assert (a - b).abs().max() < 0.005 * b.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99

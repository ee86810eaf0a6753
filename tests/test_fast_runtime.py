"""The quantbench runtime (runtimes/fast) on a CPU: same decoder code as on CUDA, run eagerly.

Oracle: the transformers runtime on the same artifact, in fp32 (its own model code and its own
dequantizing loaders), and the decoder against itself (incremental decode vs one full prefill)."""

from __future__ import annotations

import json

import pytest
import torch

from fast_runtime_helpers import kld_and_top1, windows, without_eos, write_artifact
from quantbench.errors import QuantbenchError

CPU_METHODS = ["bf16", "rtn-w4g32", "rtn-w3g32", "bnb-nf4-dq"]


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-artifacts")
    return {m: write_artifact(tiny_model, m, root / m, "cpu") for m in CPU_METHODS}


def test_fp32_model_matches_transformers_exactly(tiny_model):
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime

    hf = HFRuntime.load(tiny_model, "cpu", dtype=torch.float32)
    fast = FastRuntime.load(tiny_model, "cpu", dtype=torch.float32)
    for ids in windows(512, count=2):
        assert torch.allclose(fast.logits(ids), hf.logits(ids), atol=1e-4, rtol=0)
    assert fast.generate(ids[:12], 32) == without_eos(hf.generate(ids[:12], 32), fast.eos)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_artifact_logits_match_transformers(artifacts, method):
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime

    hf = HFRuntime.load(artifacts[method], "cpu", dtype=torch.float32)
    fast = FastRuntime.load(artifacts[method], "cpu", dtype=torch.float32)
    ref = torch.cat([hf.logits(w) for w in windows(512)])
    got = torch.cat([fast.logits(w) for w in windows(512)])
    kld, top1 = kld_and_top1(ref, got)
    assert kld < 1e-5 and top1 >= 0.99, (kld, top1)
    prompt = windows(512, count=1)[0][:16]
    assert fast.generate(prompt, 32) == without_eos(hf.generate(prompt, 32), fast.eos)


def test_incremental_decode_equals_full_prefill(tiny_model):
    """Logits of each decode step (KV cache, rotary at its position, masking) equal those of one prefill
    over the whole sequence, for every row of a batch."""
    from quantbench.runtimes.fast import FastRuntime

    fast = FastRuntime.load(tiny_model, "cpu", dtype=torch.float32)
    prompt = windows(512, count=1, length=20)[0]
    fast.prefill(prompt, batch=3, room=8)
    tokens, step_logits = [], []
    for _ in range(6):
        tokens.append(fast.decoder.token.clone())
        fast.decode(1)
        step_logits.append(fast.decoder.step_logits.float().clone())
    assert all(bool((t == t[0]).all()) for t in tokens)  # identical rows stay identical
    full = fast.logits(prompt + [int(t[0]) for t in tokens])
    for i, logits in enumerate(step_logits):
        assert torch.allclose(logits[0], full[len(prompt) + i], atol=1e-4, rtol=0)


def test_synthetic_packing_stores_what_the_recipe_writes(artifacts, tiny_model):
    """The bench's random artifacts carry the same tensor names, dtypes and shapes as written ones, so the
    runtime loads both through one path."""
    from quantbench.formats.safetensors import read_header
    from quantbench.recipes import get_recipe
    from quantbench.synthetic import packed_random_artifact

    config = json.loads((tiny_model / "config.json").read_text())
    dtype_names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8", torch.int8: "I8",
                   torch.int32: "I32", torch.int64: "I64"}
    for method in ("bf16", "rtn-w4g32", "bnb-nf4-dq"):
        header = read_header(next(artifacts[method].glob("*.safetensors")))
        _, tensors, _ = packed_random_artifact(config, get_recipe(method), "cpu")
        assert set(tensors) == set(header), method
        for name, t in tensors.items():
            if "quant_state" in name:  # bitsandbytes' JSON: its length follows the digits of nested_offset
                continue
            assert tuple(t.shape) == tuple(header[name]["shape"]), name
            if not t.is_floating_point() or name.endswith(("absmax", "quant_map")):  # the packed layouts
                assert dtype_names[t.dtype] == header[name]["dtype"], name
            # unquantized floats follow the load dtype: fp32 when bitsandbytes quantizes on this CPU


def test_unsupported_inputs_name_the_runtime_that_can(tmp_path, tiny_model):
    from quantbench.runtimes.fast import FastRuntime

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(QuantbenchError, match="--runtime llama.cpp"):
        FastRuntime.load(gguf, "cpu")
    config = json.loads((tiny_model / "config.json").read_text())
    folder = tmp_path / "gemma"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gemma2"}))
    with pytest.raises(QuantbenchError, match="--runtime transformers"):
        FastRuntime.load(folder, "cpu")
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "hqq"}}))
    with pytest.raises(QuantbenchError, match="cannot run quantization method 'hqq'; use --runtime transformers"):
        FastRuntime.load(folder, "cpu")


def test_runtime_choice(artifacts, tmp_path):
    """auto picks the quantbench runtime on CUDA for what it runs, transformers on a CPU; a named runtime
    that cannot run the artifact says which can."""
    from quantbench.bench import BenchSettings, run_bench
    from quantbench.recipes.open import check_runtime, default_runtime, open_artifact
    from quantbench.runtimes.fast import FastRuntime

    assert default_runtime(artifacts["rtn-w4g32"], "cuda") == "quantbench"
    assert default_runtime(artifacts["bnb-nf4-dq"], "cuda:0") == "quantbench"
    assert default_runtime(artifacts["rtn-w4g32"], "cpu") == "transformers"
    assert isinstance(open_artifact(artifacts["rtn-w4g32"], "cpu", "quantbench"), FastRuntime)
    with pytest.raises(QuantbenchError, match="llama.cpp runs GGUF files"):
        open_artifact(artifacts["bf16"], "cpu", "llama.cpp")
    with pytest.raises(QuantbenchError, match="unknown runtime"):
        check_runtime("vllm")
    with pytest.raises(QuantbenchError, match="--runtime transformers"):
        run_bench("Llama-3.1-8B", BenchSettings(methods=("bf16",), device="cpu", runtime="quantbench"))


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_other_architectures_match_transformers(tmp_path, model_type):
    """Qwen2 (q/k/v biases, untied) and Mistral (a sliding window shorter than the sequence) in fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime

    extra = {"sliding_window": 16} if model_type == "mistral" else {"use_sliding_window": False}
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False,
                                  **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    if model_type == "qwen2":  # random, non-zero biases so that they matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    hf = HFRuntime.load(tmp_path, "cpu", dtype=torch.float32)
    fast = FastRuntime.load(tmp_path, "cpu", dtype=torch.float32)
    ids = windows(512, count=1, length=40)[0]
    assert torch.allclose(fast.logits(ids), hf.logits(ids), atol=1e-4, rtol=0)
    assert fast.generate(ids[:24], 16) == without_eos(hf.generate(ids[:24], 16), fast.eos)


@pytest.mark.slow
def test_default_model_matches_transformers():
    """The default model (SmolLM2-135M: tied embeddings, 9 heads / 3 KV heads) in fp32, as converted: the
    quantbench runtime's logits against transformers' on the same files."""
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime
    from quantbench.sources.model import resolve_model

    folder = resolve_model(None).path
    hf = HFRuntime.load(folder, "cpu", dtype=torch.float32)
    fast = FastRuntime.load(folder, "cpu", dtype=torch.float32)
    ws = windows(49152, count=2, length=128)
    kld, top1 = kld_and_top1(torch.cat([hf.logits(w) for w in ws]), torch.cat([fast.logits(w) for w in ws]))
    assert kld < 1e-6 and top1 >= 0.99, (kld, top1)

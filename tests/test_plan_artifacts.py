"""plan's weight_bytes against real artifacts: every method quantbench can write on this machine.

Each registered recipe quantizes a tiny random Llama (hidden 256: whole K-quant super-blocks; FFN
640: not, so GGUF fallbacks show). The artifact's stored tensor bytes are read back from the files
(safetensors headers: dtype x shape; GGUF: the gguf package's tensor table) and must equal the plan
within 0.5 % (bitsandbytes and float recipes: within a few bytes a tensor). Every recipe runs on a CPU
with the set-up's packages: one that reports itself unavailable fails; the final test names what was checked.
The bitsandbytes recipes are checked again on the built-in default model (SmolLM2-135M).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_llama
from quantbench.arch import ArchSpec
from quantbench.bench import resident_bytes
from quantbench.errors import QuantbenchError
from quantbench.plan import plan
from quantbench.recipes import all_recipes, get_recipe
from quantbench.recipes.base import QuantizeJob
from quantbench.sources.model import ModelSource

TOLERANCE = 0.005  # the bound: plan within 0.5 % of the artifact
EXACT_FAMILIES = ("float", "bitsandbytes")
# bitsandbytes' JSON holds the double-quant offset as a float repr of 17-20 characters (bnb.py).
BYTES_SLACK_PER_TENSOR = 3

_SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                            "F8_E4M3": 1, "F8_E5M2": 1}

CHECKED: dict[str, dict] = {}


def artifact_tensor_bytes(folder: Path) -> dict[str, int]:
    """Stored bytes of every tensor, computed from dtype and shape in the files' own headers."""
    out: dict[str, int] = {}
    for gguf_path in folder.glob("*.gguf"):
        from gguf import GGUFReader

        out.update({t.name: int(t.n_bytes) for t in GGUFReader(str(gguf_path)).tensors})
    for shard in folder.glob("*.safetensors"):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in info["shape"]:
                numel *= d
            out[name] = numel * _SAFETENSORS_DTYPE_BYTES[info["dtype"]]
    return out


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> ModelSource:
    folder = build_tiny_llama(tmp_path_factory.mktemp("plan-tiny"), hidden=256, layers=2, ffn=640, vocab=512)
    return ModelSource(folder, "tiny-plan-llama", "tiny-plan-llama")


def _calibration(vocab: int, samples: int = 4, length: int = 64) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (samples, length), generator=g).tolist()


def _quantize(recipe, source: ModelSource, out: Path) -> None:
    out.mkdir(parents=True)
    vocab = source.config()["vocab_size"]
    job = QuantizeJob(source=source, out_dir=out, device="cpu", calibration=lambda: _calibration(vocab),
                      options={"calibration_samples": 4, "calibration_length": 64})
    recipe.quantize(job)


def _check(method: str, source: ModelSource, out: Path, model_spec: str) -> dict:
    recipe = get_recipe(method)
    _quantize(recipe, source, out)
    real = sum(artifact_tensor_bytes(out).values())
    row = next(r for r in plan(model_spec, device="cpu", device_memory_bytes=10**12, methods=[method])["methods"])
    planned = row["weight_bytes"]
    result = {"planned": planned, "real": real, "rel": (planned - real) / real, "family": recipe.family}
    assert abs(planned - real) <= TOLERANCE * real, f"{method}: plan {planned} B, artifact {real} B"
    if recipe.family in EXACT_FAMILIES:
        assert abs(planned - real) <= BYTES_SLACK_PER_TENSOR * max(1, row["quantized_tensors"]), f"{method}: plan {planned}, real {real}"
    return result


# Calibrated recipes (GPTQ, AWQ, imatrix) take 5-25 s each on 2 cores: slow tier, still run in CI.
ALL_METHODS = [pytest.param(r.name, marks=[pytest.mark.slow] if r.needs_calibration else []) for r in all_recipes()]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_plan_matches_artifact_on_tiny_model(method, tiny_source, tmp_path):
    recipe = get_recipe(method)
    spec = str(tiny_source.path)
    # scripts/setup.sh installs every backend (llama-cpp-python included) and every recipe runs on a CPU,
    # so a recipe that says it cannot run here is a broken detection or set-up: fail, never skip.
    reason = recipe.unavailable_reason("cpu")
    assert reason is None, f"{method} reports itself unavailable on this CPU machine: {reason}"
    CHECKED[method] = _check(method, tiny_source, tmp_path / "artifact", spec)
    assert recipe.name in CHECKED


def test_which_methods_were_checked():
    """Runs after the parametrized test (file order): the float and bitsandbytes recipes at least."""
    if not CHECKED:
        pytest.skip("run with the parametrized test above")
    print("\nplan vs artifact on the tiny model (bytes, relative difference):")
    for method, r in CHECKED.items():
        print(f"  {method:22} plan {r['planned']:>10} artifact {r['real']:>10} {r['rel']:+.5%}")
    fast = {r.name for r in all_recipes() if not r.needs_calibration}
    assert fast <= set(CHECKED), f"not checked: {sorted(fast - set(CHECKED))}"
    assert {"gguf-q8_0", "gguf-q4_k_m", "bnb-nf4", "fp32"} <= fast


# ---------------------------------------------------------------------------------------------------
# Memory as resident on a CPU (bitsandbytes repacks 4-bit layers at the first forward)


@pytest.mark.parametrize("method", ["bnb-nf4", "bnb-nf4-dq", "bnb-int8"])
def test_resident_bytes_on_cpu_after_a_forward(method, tiny_source, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "artifact"
    _quantize(get_recipe(method), tiny_source, out)
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
    with torch.inference_mode():
        model(torch.tensor([[1, 5, 9, 17]]))
    measured = resident_bytes(model)
    row = plan(str(tiny_source.path), device="cpu", device_memory_bytes=10**12, methods=[method])["methods"][0]
    # The 16-entry code table is one shared tensor in memory but planned per layer: 64 B x 14 linears.
    assert abs(row["resident_weight_bytes"] - measured) <= 64 * 14 + 8, (row["resident_weight_bytes"], measured)


# ---------------------------------------------------------------------------------------------------
# The built-in default model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4"])
def test_plan_matches_artifact_on_default_model(method, tmp_path):
    from quantbench.sources.model import resolve_model

    source = resolve_model(None)
    result = _check(method, source, tmp_path / "artifact", None)
    print(f"\n{method} on {source.name}: plan {result['planned']} B, artifact {result['real']} B ({result['rel']:+.6%})")
    assert abs(result["rel"]) < 1e-4

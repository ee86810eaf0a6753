"""The recipe contract: a method is one file (discovered, planned, quantized, listed), options are typed."""

from __future__ import annotations

import sys
import textwrap

import pytest

from quantbench.errors import QuantbenchError

THROWAWAY = '''
"""A throwaway method written for the test: every tensor stored in fp16."""

import torch

from quantbench.recipes.base import Recipe, TensorPlan, register
from quantbench.recipes.strategy import LOAD_CONVERT


class HalfEverything(Recipe):
    name = "test-half-everything"
    family = "test-half"
    description = "every tensor in fp16 (test method)"
    strategy = LOAD_CONVERT

    def plan_tensor(self, tensor, arch, device="cuda", resident=False):
        return TensorPlan(tensor.name, tensor.numel, 2 * tensor.numel, True, "fp16 (test)")

    def quantize(self, job):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(job.source.path, dtype=torch.float16)
        model.save_pretrained(job.out_dir)
        return {"dtype": "float16"}


register(HalfEverything())
'''


@pytest.fixture()
def throwaway_method(tmp_path, monkeypatch):
    """A recipe module in a folder of its own, added to the recipes package's search path."""
    import quantbench.recipes as package
    from quantbench.recipes import base

    folder = tmp_path / "more_recipes"
    folder.mkdir()
    (folder / "half_everything.py").write_text(textwrap.dedent(THROWAWAY))
    base.all_recipes()  # the built-in families first, so the copies below hold them
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_loaded_modules", set(base._loaded_modules))
    yield "test-half-everything"
    sys.modules.pop("quantbench.recipes.half_everything", None)


def test_a_method_from_one_file_is_listed_planned_and_quantized(throwaway_method, tiny_model, tmp_path, capsys):
    from quantbench.cli.main import main
    from quantbench.eval.memory import stored_tensor_bytes
    from quantbench.plan import plan
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import ModelSource

    assert main(["methods", "--device", "cpu"]) == 0
    assert throwaway_method in capsys.readouterr().out

    result = plan(str(tiny_model), device="cpu", device_memory_bytes=10**9, methods=[throwaway_method])
    (row,) = result["methods"]
    assert row["planned"] and row["family"] == "test-half" and row["quantize_strategy"] == "load-convert"
    assert row["bits_per_weight"] == 16.0

    out = tmp_path / "artifact"
    out.mkdir()
    recipe = get_recipe(throwaway_method)
    recipe.quantize(QuantizeJob(ModelSource(tiny_model, "tiny", "tiny"), out, "cpu"))
    written = stored_tensor_bytes(out)
    # The tiny model ties its embeddings: the file holds what the plan counts, tensor for tensor.
    assert sum(written.values()) == row["weight_bytes"]


def test_families_are_discovered_not_listed():
    import pkgutil

    import quantbench.recipes as package
    from quantbench.recipes import all_recipes

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    families = {r.family for r in all_recipes()}
    assert {"float", "bitsandbytes", "gguf", "rtn", "gptq", "awq"} <= families
    assert {"floats", "bnb", "gguf", "rtn", "gptq", "awq"} <= modules
    assert not hasattr(package, "FAMILY_MODULES")


def test_quantize_options_reach_the_recipe_under_the_names_the_api_writes(tiny_model):
    """The API writes calibration_samples / calibration_length into the job's options (api.quantize_to);
    the calibrated recipes must record them as requested. With untyped dicts a recipe read `samples`
    and recorded None."""
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import ModelSource

    samples = [[1, 2, 3, 4]] * 3
    options = {"calibration_samples": 5, "calibration_length": 4}  # as the API and worker JSON carry them
    job = QuantizeJob(ModelSource(tiny_model, "tiny", "tiny"), tiny_model, "cpu", lambda: samples, options)
    for method in ("gptq-w4g128", "awq-w4g128"):
        _, record = get_recipe(method).calibration(job)
        assert (record["requested_samples"], record["requested_length"]) == (5, 4)
        assert (record["samples"], record["length"]) == (3, 4)


def test_an_unknown_option_is_an_error_not_ignored(tiny_model):
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import ModelSource

    with pytest.raises(QuantbenchError, match="unknown quantize option.*samples.*known:.*calibration_samples"):
        QuantizeJob(ModelSource(tiny_model, "tiny", "tiny"), tiny_model, "cpu", options={"samples": 5})


def test_a_fit_folder_is_gguf_without_loading_it(tmp_path):
    """is_gguf answers from quantbench.json alone: it once returned a loaded llama.cpp runtime (a second
    copy of the model in the measuring process) instead of True."""
    import json

    from quantbench.recipes.open import default_runtime, is_gguf

    (tmp_path / "quantbench.json").write_text(json.dumps({"method": "fit", "runtime": "llama.cpp"}))  # no model.gguf
    assert is_gguf(tmp_path) is True
    assert default_runtime(tmp_path, "cpu") == "llama.cpp"

"""The single homes of facts that used to be written several times: the safetensors header, the
temp-then-rename write, dtype sizes; and a metric added as one module plus one column."""

from __future__ import annotations

import json
import struct
import sys

import pytest
import torch
from safetensors.torch import save_file

from quantbench.artifact import atomic_file, write_json_atomic
from quantbench.errors import QuantbenchError
from quantbench.formats import safetensors


def _file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.bfloat16)}, str(path))
    return path


def test_tensor_bytes_are_dtype_times_shape(tmp_path):
    got = safetensors.tensor_bytes(_file(tmp_path))
    assert got == {"a": 3 * 5 * 4, "b": 7 * 2}


@pytest.mark.parametrize("damage", ["garbled", "truncated", "short", "huge_length"])
def test_damaged_header_is_one_clear_error(tmp_path, damage):
    path = _file(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if damage == "garbled":
        data = data[:8] + b"{not json" + data[17:]
    elif damage == "truncated":
        data = data[: 8 + n + 10]  # the header promises more data than is there
    elif damage == "short":
        data = data[:5]
    else:
        data = struct.pack("<Q", 1 << 40) + data[8:]
    path.write_bytes(data)
    with pytest.raises(QuantbenchError, match="re-download"):
        safetensors.read_header(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32,
                                   torch.int64, torch.float64, torch.bool])
def test_dtype_bytes_match_torch(dtype):
    assert safetensors.dtype_bytes(str(dtype)) == torch.tensor([], dtype=dtype).element_size()


def test_atomic_file_leaves_old_content_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# A whole metric in one module: discovered from quantbench/eval/, streamed over the windows beside the
# others, in the row without any other edit. The second file is its column in report/tables.COLUMNS.
TOP5_MODULE = '''
import torch

from quantbench.eval.metrics import register_window_metric


class Top5Agreement:
    """Fraction of scored tokens whose reference argmax is among the candidate's 5 most likely."""

    def __init__(self):
        self.hits, self.tokens = 0, 0

    def add(self, logprobs, targets, ref_logprobs):
        top5 = logprobs.topk(5, dim=-1).indices
        self.hits += int((top5 == ref_logprobs.argmax(-1, keepdim=True)).any(-1).sum())
        self.tokens += len(targets)

    def summary(self):
        return {"top5_agreement": self.hits / self.tokens}


register_window_metric("top5", Top5Agreement)
'''


def test_a_metric_is_one_module_and_one_column(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import quantbench.eval
    from quantbench.eval import metrics
    from quantbench.eval.evaluate import evaluate_in_this_process
    from quantbench.eval.perplexity import PerplexityProtocol, make_windows
    from quantbench.eval.reference import compute_reference
    from quantbench.eval.results import Measured
    from quantbench.jobs import EvaluateJob
    from quantbench.report import tables
    from quantbench.runtimes.hf import HFRuntime

    (tmp_path / "metric_pkg").mkdir()
    (tmp_path / "metric_pkg" / "top5_for_test.py").write_text(TOP5_MODULE)
    monkeypatch.setattr(quantbench.eval, "__path__", [*quantbench.eval.__path__, str(tmp_path / "metric_pkg")])
    monkeypatch.setattr(metrics, "WINDOW_METRICS", dict(metrics.WINDOW_METRICS))
    monkeypatch.setattr(tables, "COLUMNS", tables.COLUMNS + (("top-5 %", "top5_agreement", lambda v: f"{100 * v:.2f}"),))
    monkeypatch.delitem(sys.modules, "quantbench.eval.top5_for_test", raising=False)

    # The candidate: the tiny model in bf16 (the reference is its fp32 self).
    candidate = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model.save_pretrained(candidate)
    for f in tiny_model.glob("tokenizer*"):
        (candidate / f.name).write_bytes(f.read_bytes())
    ids = torch.randint(3, 500, (3 * 32,), generator=torch.Generator().manual_seed(0)).tolist()
    windows = make_windows(ids, PerplexityProtocol(window=32, max_windows=3))
    reference = tmp_path / "ref.safetensors"
    ref_runtime = HFRuntime.load(tiny_model, "cpu", dtype=torch.float32)
    compute_reference(ref_runtime, windows, reference, {"test": True})

    measured = Measured(**evaluate_in_this_process(EvaluateJob(str(candidate), "cpu", tuple(windows), str(reference))))

    # Oracle: float64 top-5 sets from the two models' logits, computed here directly.
    cand_runtime = HFRuntime.load(candidate, "cpu")
    hits = tokens = 0
    for w in windows:
        ref = ref_runtime.logits(w.input_ids)[w.first_scored:].double()
        cand = cand_runtime.logits(w.input_ids)[w.first_scored:].double()
        hits += int((cand.topk(5, -1).indices == ref.argmax(-1, keepdim=True)).any(-1).sum())
        tokens += len(w.targets)
    assert measured.metrics["top5_agreement"] == pytest.approx(hits / tokens)
    assert measured.metrics["top1_agreement"] <= measured.metrics["top5_agreement"]
    row = {"method": "bf16", "runtime": measured.runtime, **measured.metrics, "protocol": {"window": 32}}
    assert f"{100 * hits / tokens:.2f}" in tables.row_lines(row) and "top-5 %" in tables.row_lines(row)
    assert '{"window": 32}' in tables.row_lines(row)  # `quantbench eval` prints the protocol it measured under


def test_jobs_cross_the_process_boundary_unchanged():
    from quantbench.eval.perplexity import Window
    from quantbench.jobs import EvaluateJob, QuantizeArtifactJob, ReferenceJob, SpeedRequest, from_json, to_json

    windows = (Window([1, 2, 3], [2, 3, 4], 0), Window([5, 6, 7], [7, 8], 1))
    jobs = [
        ReferenceJob("/m", "cpu", windows, "/r.safetensors", {"model": "m"}, True),
        ReferenceJob("/m", "cuda", windows, "/r.safetensors", {"model": "m"}, False, {0: 10**9, 1: 2 * 10**9, "cpu": 5}),
        QuantizeArtifactJob("gptq-w4g128", "/m", "m", "fp", "/out", "cpu", ((1, 2), (3, 4)), 32, 2),
        QuantizeArtifactJob("rtn-w4g128", "/m", "m", "fp", "/out", "cuda", (), 32, 512, replaced_bytes=123),
        EvaluateJob("/a", "cuda", windows, "/r.safetensors", SpeedRequest((1, 2, 3), 4, 1, 2, 1),
                    ({"context_ids": [1], "choice_ids": [[2], [3]], "choice_chars": [1, 1], "answer": 0},)),
        EvaluateJob("/a", "cpu", windows, "/r.safetensors"),
        EvaluateJob("/a", "cuda", windows, "/r.safetensors", runtime="llama.cpp", import_first="llama_cpp"),
    ]
    for job in jobs:
        assert from_json(json.loads(json.dumps(to_json(job)))) == job


def test_every_command_takes_the_model_the_same_way(tmp_path):
    """One resolver: plan and bench, like compare, default to the built-in model when MODEL is left out."""
    from quantbench.cli.main import build_parser
    from quantbench.sources.model import DEFAULT_MODEL, classify

    parser = build_parser()
    for command in (["plan"], ["bench"], ["compare"], ["quantize", "--method", "bf16", "-o", "x"],
                    ["fit", "--budget", "1GB", "-o", "x.gguf"]):
        assert parser.parse_args(command).model is None, command
    assert classify(None).kind == classify(DEFAULT_MODEL).kind == "built-in default model"
    assert classify("Llama-3.1-8B").kind == classify("meta-llama/Llama-3.1-8B").kind == "preset"
    (tmp_path / "config.json").write_text("{}")
    assert classify(str(tmp_path)).kind == "local folder"
    assert classify(str(tmp_path / "config.json")).kind == "config.json"
    assert classify("some-org/some-model").kind == "hub"
    with pytest.raises(QuantbenchError, match="not found"):
        classify("no-such-model")


def test_cli_imports_only_the_api():
    import ast
    from pathlib import Path

    import quantbench.cli

    for path in Path(quantbench.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantbench"):
                allowed = node.module == "quantbench" and [a.name for a in node.names] == ["api"]
                assert allowed or node.module.startswith("quantbench.cli"), f"{path.name} imports {node.module}"
                assert node.module != "quantbench.cli.main", f"{path.name} imports the entry point (a cycle)"


def test_a_runtime_is_one_module_and_its_recipe(tmp_path, monkeypatch):
    """A runtime defined in one module (a Runtime subclass) and named by its recipe is accepted by
    --runtime, chosen by default for that recipe's artifacts on a CPU, and tells the worker what it must
    import first on CUDA: nothing in the CLI, the API or the worker lists runtime names."""
    from quantbench.artifact import META_FILE, write_json_atomic
    from quantbench.jobs import EvaluateJob
    from quantbench.recipes import base
    from quantbench.recipes.open import check_runtime, default_runtime
    from quantbench.recipes.strategy import LOAD_CONVERT
    from quantbench.runtimes import runtime_class, runtime_names
    from quantbench.runtimes.base import Runtime

    class ToyRuntime(Runtime):  # what quantbench/runtimes/toy.py would hold
        name = "toy-runtime-for-test"
        import_first_on_cuda = "json"

    class ToyRecipe(base.Recipe):  # what its recipe file would hold (quantize/open are not reached here)
        name, family, runtime, description, strategy = "toy-method", "toy", ToyRuntime.name, "test", LOAD_CONVERT

    base.all_recipes()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    base.register(ToyRecipe())

    assert ToyRuntime.name in runtime_names() and runtime_class(ToyRuntime.name) is ToyRuntime
    assert check_runtime(ToyRuntime.name) == ToyRuntime.name
    with pytest.raises(QuantbenchError, match="unknown runtime 'toy-runtime-for-tes'"):
        check_runtime("toy-runtime-for-tes")
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    write_json_atomic(artifact / META_FILE, {"method": "toy-method", "runtime": ToyRuntime.name})
    assert default_runtime(artifact, "cpu") == ToyRuntime.name
    # workload.evaluate_artifact's rule, and the worker reads the job's import_first into its environment
    job = EvaluateJob(str(artifact), "cuda", (), "/r", runtime=ToyRuntime.name,
                      import_first=runtime_class(ToyRuntime.name).import_first_on_cuda)
    assert job.import_first == "json"
    assert runtime_class("llama.cpp").import_first_on_cuda == "llama_cpp"
    assert runtime_class("transformers").import_first_on_cuda is None

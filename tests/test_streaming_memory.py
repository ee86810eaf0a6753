"""Streaming quantization holds what its plan says, phase by phase; the whole-model path does not.

A model shaped like the 8B case, where the embedding dominates (vocabulary 32k x hidden 1024 against
3.7 M-element linears; 94 M parameters, 0.38 GB in fp32), is written to disk as sharded bf16
safetensors, then quantized with RTN w4g128 twice, each in a FRESH process (so no heap pages of an
earlier test are resident and reused) while RssAnon is sampled (quantbench.memory_sampler):
- the streaming path (quantbench.streaming.intgrid): each phase's measured peak above the process's
  own baseline must agree with that phase's terms in quantbench.streaming.budget within TOLERANCE.
  Both directions for the phase that sets the peak (embedding read + one slice cast for writing: long
  enough that a loaded machine cannot make the 2 ms sampler miss it); the short linear phases (a few
  ms each) only from above, since a starved sampler thread could miss a moment and read low;
- the whole-model path, written here as the obvious code (load the model in fp32, quantize every
  linear, write the checkpoint): the negative control, which must exceed that same bound.
Both artifacts must be equal tensor for tensor, so the budget is not met by doing less work.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from quantbench.arch import ArchSpec
from quantbench.streaming.budget import streaming_budget
from quantbench.streaming.synthetic import write_random_checkpoint
from quantbench.streaming.tensorwise import PHASE_DENSE

CONFIG = dict(
    model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=1024, intermediate_size=3584,
    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=32768,
    tie_word_embeddings=False, max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)
# Stated tolerance: 10 % of the phase's planned bytes + 2 MB of Python objects the terms do not itemize.
# Measured on the 2-core CPU machine (torch 2.13): embedding phase 1.001 x plan, linear 1.03, packing 0.95.
TOLERANCE, ALLOWANCE = 0.10, 2_000_000

_JOB = r"""
import json, sys, torch
from pathlib import Path
torch.set_num_threads(2)
which, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from quantbench.memory_sampler import MemorySampler
from quantbench.methods.rtn import RTNConfig, rtn_quantize
from quantbench.formats.compressed_tensors import write_checkpoint, quantization_config
quantization_config(4, 128, torch.float16, [])  # import compressed-tensors before sampling starts
config = RTNConfig(4, 128, "float16")
if which == "streaming":
    from quantbench.streaming.intgrid import quantize_rtn_streaming
    peaks = quantize_rtn_streaming(src, out, config, "cpu").memory
else:
    from transformers import AutoModelForCausalLM
    from quantbench.arch import ArchSpec, LINEAR
    hf_config = json.loads((src / "config.json").read_text())
    arch = ArchSpec.from_config(hf_config)
    with MemorySampler() as sampler, torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        state = model.state_dict()
        linears = {t.name.removesuffix(".weight"): rtn_quantize(state[t.name], config) for t in arch.tensors() if t.role == LINEAR}
        dense = {t.name: state[t.name] for t in arch.tensors() if t.role != LINEAR}
        write_checkpoint(out, {**hf_config, "dtype": "float16"}, dense, linears, torch.float16, ignore=["lm_head"])
    peaks = sampler.peaks
print("RESULT " + json.dumps(peaks.as_dict()))
"""


def _run(which: str, src, out) -> dict:
    proc = subprocess.run([sys.executable, "-c", _JOB, which, str(src), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is read from /proc (Linux)")
def test_streaming_agrees_with_its_plan_per_phase_and_the_whole_model_path_does_not(tmp_path):
    src = write_random_checkpoint(CONFIG, tmp_path / "model", torch.bfloat16, max_shard_bytes=60 * 2**20)
    assert len(list(src.glob("*.safetensors"))) > 1
    arch = ArchSpec.from_config(CONFIG)
    budget = streaming_budget("rtn", arch, "cpu", source_bytes=2, bits=4, group_size=128)
    planned = {phase: sum(terms.values()) for phase, terms in budget.host_phases.items()}
    fp32_model = arch.num_params() * 4

    streaming = _run("streaming", src, tmp_path / "streaming")
    whole = _run("whole", src, tmp_path / "whole")

    base = streaming["baseline_anon_bytes"]
    measured = {phase: peak - base for phase, peak in streaming["phases"].items()}
    assert sorted(measured) == sorted(planned), (measured, planned)  # every phase ran, none unplanned
    for phase, plan in planned.items():
        assert measured[phase] <= plan * (1 + TOLERANCE) + ALLOWANCE, (phase, measured[phase], plan, budget.lines())
    # the phase that sets the peak: the plan is not just an upper bound, it is the measurement
    assert max(planned, key=planned.get) == PHASE_DENSE
    assert abs(measured[PHASE_DENSE] - planned[PHASE_DENSE]) <= planned[PHASE_DENSE] * TOLERANCE + ALLOWANCE, (measured, planned)
    work = budget.host_peak_bytes - budget.baseline_host_bytes
    assert abs(streaming["anon_bytes"] - base - work) <= work * TOLERANCE + ALLOWANCE, (streaming, work)

    bound = base + work * (1 + TOLERANCE) + ALLOWANCE
    assert work < fp32_model / 2, "the budget itself must be far below the model, or this test proves nothing"
    assert whole["anon_bytes"] > whole["baseline_anon_bytes"] + fp32_model, whole  # it did hold the model
    assert whole["anon_bytes"] > bound, (whole, bound)

    a, b = _tensors(tmp_path / "streaming"), _tensors(tmp_path / "whole")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    config_a = json.loads((tmp_path / "streaming" / "config.json").read_text())
    config_b = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config_a["quantization_config"] == config_b["quantization_config"]


@pytest.mark.parametrize("cols", [256, 200])  # whole groups of 128; a ragged last group
def test_rtn_by_rows_equals_one_call_over_every_row(monkeypatch, cols):
    from quantbench.methods.rtn import RTNConfig, rtn_quantize
    from quantbench.streaming import intgrid

    monkeypatch.setattr(intgrid, "RTN_SLICE_ELEMENTS", 7 * cols)  # 7 rows a slice: 5 slices, the last short
    W = torch.randn(31, cols, generator=torch.Generator().manual_seed(0))
    config = RTNConfig(4, 128, "float16")
    ours, whole = intgrid.rtn_by_rows(W, config), rtn_quantize(W, config)
    for field in ("codes", "scales", "zeros"):
        a, b = getattr(ours, field), getattr(whole, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field

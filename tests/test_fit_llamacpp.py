"""fit through llama.cpp: overrides write exactly the plan, buffers and KV bytes match llama.cpp, end to end."""

from __future__ import annotations

import random
from pathlib import Path

import llama_cpp  # noqa: F401  (scripts/setup.sh installs it; a missing build must fail, not skip)
import pytest

from quantbench.errors import QuantbenchError


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """12 layers of width 256 (K-types valid): blk.1 and blk.10/11 tell an anchored pattern from a loose one."""
    from conftest import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("wide"), hidden=256, layers=12, ffn=512, vocab=512)


@pytest.fixture(scope="module")
def small_wide(tmp_path_factory) -> Path:
    """2 layers of width 256: enough for fit end to end, quick to measure."""
    from conftest import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("small-wide"), hidden=256, layers=2, ffn=512, vocab=512)


@pytest.fixture(scope="module")
def wide_f32(wide_model, tmp_path_factory) -> Path:
    from quantbench.formats.gguf_writer import write_gguf

    path = tmp_path_factory.mktemp("wide-gguf") / "f32.gguf"
    write_gguf(wide_model, path, "F32", extra_metadata={"quantbench.fit.kv_cache_type": "Q8_0"})
    return path


def _candidates(model_dir):
    import json

    from quantbench.arch import ArchSpec
    from quantbench.fit.candidates import tensor_candidates

    return tensor_candidates(ArchSpec.from_config(json.loads((model_dir / "config.json").read_text())))


def test_overrides_write_exactly_the_plan(wide_model, wide_f32, tmp_path):
    from quantbench.fit.write import write_plan
    from quantbench.formats.gguf_types import read_tensor_types

    rng = random.Random(0)
    candidates = _candidates(wide_model)
    plan, plan_bytes = {}, {}
    for c in candidates:
        k = rng.randrange(len(c.types))
        plan[c.gguf_name], plan_bytes[c.gguf_name] = c.types[k], c.bytes[k]
    # blk.1 differs from blk.10 and blk.11 on purpose: an unanchored "blk.1." pattern would catch them
    for name in ("blk.1.attn_v.weight", "blk.10.attn_v.weight", "blk.11.attn_v.weight"):
        c = next(c for c in candidates if c.gguf_name == name)
        t = {"blk.1.attn_v.weight": "Q6_K", "blk.10.attn_v.weight": "Q4_K", "blk.11.attn_v.weight": "Q4_1"}[name]
        plan[name], plan_bytes[name] = t, c.bytes[c.types.index(t)]
    out = tmp_path / "fit.gguf"
    write_plan(wide_f32, out, plan, plan_bytes, imatrix=None)
    written = read_tensor_types(out)
    for name, t in plan.items():
        assert written[name] == (t, plan_bytes[name]), name
    assert len(set(plan.values())) >= 6
    assert [p.name for p in tmp_path.iterdir()] == ["fit.gguf"]


def test_a_plan_llama_cpp_cannot_write_is_an_error_and_no_file(wide_f32, tmp_path):
    from quantbench.fit.write import write_plan

    # token_embd is 256 wide: Q4_K is fine; claim a wrong byte count for it to force a mismatch
    out = tmp_path / "bad.gguf"
    with pytest.raises(QuantbenchError, match="differently from the plan"):
        write_plan(wide_f32, out, {"token_embd.weight": "Q4_K"}, {"token_embd.weight": 1}, imatrix=None)
    assert list(tmp_path.iterdir()) == []


def test_kv_bytes_and_buffers_agree_with_llama_cpp(wide_model, wide_f32, tmp_path):
    import json
    import re

    from quantbench.arch import ArchSpec
    from quantbench.fit.budget import RuntimeSetting, kv_cache_bytes, measure_buffers
    from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp
    from quantbench.runtimes.llamacpp import recent_log

    arch = ArchSpec.from_config(json.loads((wide_model / "config.json").read_text()))
    q4 = tmp_path / "q4.gguf"
    quantize_with_llama_cpp(wide_f32, q4, "Q4_K_M")
    for kv in ("F16", "Q8_0", "Q4_0"):
        setting = RuntimeSetting(1000, kv)
        buffers = measure_buffers(wide_f32, setting)
        # llama.cpp's own line: "llama_kv_cache: size = X MiB (1024 cells, ...)"
        line = [l for l in recent_log if "llama_kv_cache: size" in l][-1]
        logged_mib = float(re.search(r"size =\s+([0-9.]+) MiB", line).group(1))
        assert "1024 cells" in line
        assert kv_cache_bytes(arch, setting) / 2**20 == pytest.approx(logged_mib, abs=0.006)
        assert buffers > 0
        # the buffers do not depend on the weight types: the same for the F32 and the Q4_K_M file
        assert measure_buffers(q4, setting) == buffers


def test_runtime_applies_the_recorded_kv_type(wide_f32):
    from quantbench.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(wide_f32)
    try:
        assert runtime.kv_cache_type == "Q8_0" and runtime.flash_attention == "on"
        assert runtime.logits([1, 5, 9, 3]).shape == (4, 512)
    finally:
        runtime.close()
    explicit = LlamaCppRuntime(wide_f32, kv_cache_type="F16")
    assert explicit.kv_cache_type == "F16"
    explicit.close()


def test_fit_end_to_end_on_a_tiny_model(small_wide, tiny_text_file, tmp_path):
    wide_model = small_wide
    import json

    from quantbench import api
    from quantbench.arch import ArchSpec
    from quantbench.fit.candidates import tensor_candidates
    from quantbench.fit.pipeline import FitConfig, _fixed_tensor_bytes, _lossless_intermediate, runtime_options
    from quantbench.fit.sensitivity import SensitivitySettings
    from quantbench.formats.gguf_types import read_tensor_types
    from quantbench.runtimes.llamacpp import LlamaCppRuntime
    from quantbench.sources.model import resolve_model

    settings = api.Settings(calibration_samples=6, calibration_length=64)
    sensitivity = SensitivitySettings(fisher_sequences=2, direct_tensors=4, direct_levels=1)
    out = tmp_path / "out" / "fit.gguf"

    def run(budget):
        return api.fit(str(wide_model), budget, out, context=256, text=str(tiny_text_file), device="cpu", settings=settings,
                       sensitivity=sensitivity)

    # impossible budgets: one clear error each, nothing written
    with pytest.raises(QuantbenchError, match="alone needs"):
        run(1000)
    source = resolve_model(str(wide_model))
    arch = ArchSpec.from_config(source.config())
    candidates = tensor_candidates(arch)
    intermediate = _lossless_intermediate(source, tmp_path / "work")
    fixed = _fixed_tensor_bytes(intermediate, candidates)
    runtime = runtime_options(arch, intermediate, FitConfig(budget_bytes=10**9, context=256))
    smallest = fixed + sum(min(c.bytes) for c in candidates) + min(sum(v) for v in runtime.values())
    largest = fixed + sum(max(c.bytes) for c in candidates) + max(sum(v) for v in runtime.values())
    with pytest.raises(QuantbenchError, match=f"raise --budget to at least {smallest / 1e6:,.2f} MB"):
        run(smallest - 1)
    assert not out.parent.exists() or not any(out.parent.iterdir())

    budget = (smallest + largest) // 2
    report = run(budget)
    assert out.is_file()
    written = read_tensor_types(out)
    assert {n: written[n][0] for n in report["plan"]} == report["plan"]
    assert report["memory"]["total"] <= budget
    assert report["memory"]["weights"] == sum(b for _, b in written.values())
    frontier = json.loads(out.with_name("fit.frontier.json").read_text())
    assert out.with_name("fit.frontier.png").stat().st_size > 10_000
    pts = frontier["frontier"]["points"]
    assert all(a["total_bytes"] < b["total_bytes"] and a["predicted_kld"] > b["predicted_kld"] for a, b in zip(pts, pts[1:]))
    assert len(report["sensitivity"]["direct"]) == 4
    runtime_ = LlamaCppRuntime(out)
    try:
        assert runtime_.kv_cache_type == report["kv_cache_type"]
    finally:
        runtime_.close()
    # fit's metadata reached the file through llama.cpp's quantizer (no tagged full-precision copy)
    import gguf

    fields = gguf.GGUFReader(str(out)).fields
    assert fields["quantbench.fit.budget_bytes"].contents() == str(budget)
    assert fields["quantbench.fit.llama_cpp_flags"].contents() == report["llama_cpp_flags"]
    # a smaller budget never predicts a lower KLD
    smaller = run((smallest + budget) // 2)
    assert smaller["predicted_kld"] >= report["predicted_kld"]


def test_compare_judges_rows_by_runtime_memory_and_adds_fit(small_wide, tiny_text_file, tmp_path):
    wide_model = small_wide
    from quantbench import api
    from quantbench.eval.perplexity import PerplexityProtocol

    settings = api.Settings(calibration_samples=6, calibration_length=64, measure_speed=False,
                            protocol=PerplexityProtocol(window=64, max_windows=2))
    with pytest.raises(QuantbenchError, match="needs --memory-budget"):
        api.compare(str(wide_model), ["fit"], text=str(tiny_text_file), out_dir=tmp_path, device="cpu", settings=settings)
    from quantbench.fit.pipeline import FitConfig, prepare_fit

    work = api.prepare(str(wide_model), str(tiny_text_file), settings)
    setup = prepare_fit(work, FitConfig(budget_bytes=10**9, context=256))
    smallest = setup.fixed + sum(min(c.bytes) for c in setup.allowed) + min(sum(v) for v in setup.runtime.values())
    q8_0 = setup.fixed + sum(c.bytes[c.types.index("Q8_0")] for c in setup.allowed) + sum(setup.runtime["F16"])
    budget = (smallest + q8_0) // 2  # gguf-q8_0 does not fit, fit's smallest does
    result = api.compare(str(wide_model), ["gguf-q8_0", "fit"], text=str(tiny_text_file), out_dir=tmp_path, device="cpu",
                         settings=settings, memory_budget_bytes=budget, context=256)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["fit"]["status"] == "ok", rows["fit"]["status"]
    for r in rows.values():
        m = r["runtime_memory"]
        assert m["total"] == m["weights"] + m["kv_cache"] + m["buffers"]
    assert rows["gguf-q8_0"]["runtime_memory"]["total"] > budget >= rows["fit"]["runtime_memory"]["total"]
    assert result["recommendation"]["method"] == "fit"

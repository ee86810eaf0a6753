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
    intermediate = _lossless_intermediate(source, arch, tmp_path / "work")
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


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory) -> Path:
    """Gemma-3 in small, set up as Gemma-3-270m is here: an HF folder quantbench made from a GGUF, whose
    vocabulary llama.cpp's converter copies from that GGUF (the marker file says which). Tied embeddings,
    four norms and q/k norms per layer, head_dim != hidden/heads, sliding-window attention over 64 tokens
    (both layers: llama.cpp takes Gemma-3's every-6th-layer-global pattern, as HF's default layer_types);
    rows of 128 (K-types fall back) except ffn_down (256: K-types valid), as Gemma-3-270m's 640 and 2048."""
    import json
    import shutil

    import torch
    import transformers

    from conftest import build_tiny_llama
    from quantbench.formats.gguf_writer import write_gguf
    from quantbench.sources.model import SOURCE_GGUF_FILE

    root = tmp_path_factory.mktemp("gemma3")
    donor_dir = build_tiny_llama(root / "donor", vocab=512)  # its tokenizer, and a GGUF carrying it
    donor = write_gguf(donor_dir, root / "donor.gguf", "F32").path
    torch.manual_seed(3)
    config = transformers.Gemma3TextConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64,
                                           sliding_window=64,
                                           max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    folder = root / "gemma3"
    model.save_pretrained(folder)
    for f in donor_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    (folder / SOURCE_GGUF_FILE).write_text(json.dumps({"gguf": str(donor), "fingerprint": "donor"}))
    return folder


def test_fit_end_to_end_on_a_tiny_gemma3(tiny_gemma3, tiny_text_file, tmp_path):
    """fit on an architecture quantbench's own GGUF writer does not know: llama.cpp's converter writes the
    lossless intermediate, the candidates are costed as llama.cpp writes them (fallbacks on 128-wide rows),
    the file holds exactly the plan, and llama-cpp-python opens it."""
    import gguf
    import numpy as np

    from quantbench import api
    from quantbench.fit.pipeline import FitConfig, fit_model, prepare_fit
    from quantbench.fit.sensitivity import SensitivitySettings
    from quantbench.formats.gguf_types import read_tensor_types

    settings = api.Settings(calibration_samples=4, calibration_length=64)
    sensitivity = SensitivitySettings(fisher_sequences=2, fisher_tokens=64, direct_tensors=3, direct_levels=1,
                                      direct_tokens=64)
    work = api.prepare(str(tiny_gemma3), str(tiny_text_file), settings)
    setup = prepare_fit(work, FitConfig(budget_bytes=10**9, context=256, kv_cache_types=("F16",)))
    assert gguf.GGUFReader(str(setup.intermediate)).fields["general.architecture"].contents() == "gemma3"
    smallest = setup.fixed + sum(min(c.bytes) for c in setup.allowed) + sum(setup.runtime["F16"])
    largest = setup.fixed + sum(max(c.bytes) for c in setup.allowed) + sum(setup.runtime["F16"])
    budget = smallest + (largest - smallest) // 8  # about 5.5 bits per weight: a mixture of 4-8 bit types
    out = tmp_path / "fit.gguf"
    report = fit_model(work, FitConfig(budget_bytes=budget, context=256, kv_cache_types=("F16",), sensitivity=sensitivity),
                       out, "cpu")
    written = read_tensor_types(out)
    assert {n: written[n][0] for n in report["plan"]} == report["plan"]
    assert report["memory"]["weights"] == sum(b for _, b in written.values())
    assert report["memory"]["total"] <= budget
    assert "output.weight" not in written  # tied: token_embd is the output too
    assert len(set(report["plan"].values())) >= 3  # a real mixture, not one type everywhere
    # 128-wide rows never hold a K-type (llama.cpp falls back); the 256-wide attn_output and ffn_down may
    k_types = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}
    cols = {c.gguf_name: c.shape[-1] for c in setup.candidates}
    assert sorted({n.split(".")[-2] for n, w in cols.items() if w % 256 == 0}) == ["attn_output", "ffn_down"]
    for c in setup.candidates:
        assert not (set(c.types) & k_types) if c.shape[-1] % 256 else {"Q4_K", "Q6_K"} <= set(c.types), c.gguf_name
        assert not (c.shape[-1] % 256 and written[c.gguf_name][0] in k_types), c.gguf_name
    # what llama-cli and friends use; logits_all, or eval() leaves `scores` as np.ndarray's uninitialised memory
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False)
    try:
        ids = llm.tokenize(b"The quick brown fox", add_bos=True)
        llm.eval(ids)
        last = llm.scores[len(ids) - 1]  # the last position's logits
        assert np.isfinite(last).all() and last.std() > 1e-3
    finally:
        llm.close()
    # and it computes the model: llama.cpp on the file vs transformers fp32, mean KLD over a window
    import torch
    from transformers import AutoModelForCausalLM

    from quantbench.runtimes.llamacpp import LlamaCppRuntime

    window = work.calibration[0][:48]
    with torch.no_grad():
        ref = torch.log_softmax(AutoModelForCausalLM.from_pretrained(tiny_gemma3, dtype=torch.float32)(
            torch.tensor([window])).logits[0].double(), -1)
    runtime = LlamaCppRuntime(out)
    try:
        got = torch.log_softmax(runtime.logits(window).double(), -1)
    finally:
        runtime.close()
    assert float((ref.exp() * (ref - got)).sum(-1).mean()) < 0.05  # random tiny weights at ~5.5 bits


def test_sensitivity_refuses_an_intermediate_that_is_not_the_model(tiny_gemma3, tiny_text_file):
    """The converter's GGUF holds Gemma-3's chosen tensors exactly as the model's parameters (the estimates
    and the direct measurements rely on it); a transformed tensor is an error, not a silent mismeasure."""
    from quantbench import api
    from quantbench.fit.pipeline import FitConfig, prepare_fit
    from quantbench.fit.sensitivity import SensitivityRun, SensitivitySettings, read_quantized

    work = api.prepare(str(tiny_gemma3), str(tiny_text_file), api.Settings(calibration_samples=4, calibration_length=64))
    setup = prepare_fit(work, FitConfig(budget_bytes=10**9, context=256, kv_cache_types=("F16",)))
    run = SensitivityRun(tiny_gemma3, setup.arch, work.calibration, SensitivitySettings())
    W = {name: dequant() for name, _, _, dequant in read_quantized(setup.intermediate)
         if name in {c.gguf_name for c in setup.candidates}}
    assert set(W) == {c.gguf_name for c in setup.candidates} and "token_embd.weight" in W
    run.check_same_weights(W)
    W["token_embd.weight"] = W["token_embd.weight"] * 128**0.5  # as if the writer folded Gemma's embedding scale in
    with pytest.raises(QuantbenchError, match="token_embd.weight in the lossless GGUF differs"):
        run.check_same_weights(W)


def test_kv_bytes_agree_with_llama_cpp_on_sliding_window_layers(tiny_gemma3, tmp_path):
    """Gemma-3's sliding-window layers: at a context past the window llama.cpp's library default
    (swa_full = true, what quantbench's runtime uses) still holds every cell, as fit counts them."""
    import json
    import re

    from quantbench.arch import ArchSpec
    from quantbench.fit.budget import RuntimeSetting, kv_cache_bytes, measure_buffers
    from quantbench.recipes.gguf import write_source_gguf
    from quantbench.runtimes.llamacpp import recent_log
    from quantbench.sources.model import ModelSource

    arch = ArchSpec.from_config(json.loads((tiny_gemma3 / "config.json").read_text()))
    path = tmp_path / "g.gguf"
    write_source_gguf(ModelSource(tiny_gemma3, "tiny-gemma3", "f"), arch, path, "F32")
    for kv in ("F16", "Q8_0"):
        setting = RuntimeSetting(1000, kv)
        assert arch.sliding_window < setting.context
        measure_buffers(path, setting)
        # llama.cpp logs one "llama_kv_cache: size = X MiB (N cells, L layers, ...)" per cache (full and SWA)
        lines = [line for line in recent_log if "llama_kv_cache: size" in line][-2:]
        assert sum(int(re.search(r"(\d+) layers", line).group(1)) for line in lines) == arch.num_layers
        assert all("1024 cells" in line for line in lines)
        logged_mib = sum(float(re.search(r"size =\s+([0-9.]+) MiB", line).group(1)) for line in lines)
        assert kv_cache_bytes(arch, setting) / 2**20 == pytest.approx(logged_mib, abs=0.011)

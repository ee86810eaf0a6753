"""quantbench plan from configs alone: hand arithmetic, architecture and KV-cache oracles, CLI.

The byte-exactness of every method against real artifacts is in test_plan_artifacts.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from quantbench.arch import LLAMA_FAMILY, ArchSpec
from quantbench.errors import QuantbenchError
from quantbench.plan import complete_config, kv_cache_bytes, load_model_config, plan
from quantbench.presets import PRESETS, find_preset

GB = 10**9


def _method(result: dict, name: str) -> dict:
    return next(r for r in result["methods"] if r["method"] == name)


# ---------------------------------------------------------------------------------------------------
# Llama-3.1-8B by hand


# (rows, cols) of the seven linears of one Llama-3.1-8B layer: q, k, v, o, gate, up, down.
LLAMA31_8B_LINEARS = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
LLAMA31_8B_EMBED = 128256 * 4096  # embed_tokens and lm_head (not tied)
LLAMA31_8B_NORMS = 32 * 2 * 4096 + 4096  # two per layer + final norm


def test_llama31_8b_params_by_hand():
    result = plan("Llama-3.1-8B", context=8192, device="cuda", device_memory_bytes=80 * GB, methods=["bf16"])
    linear = 32 * sum(r * c for r, c in LLAMA31_8B_LINEARS)
    assert linear == 6_979_321_856
    params = linear + 2 * LLAMA31_8B_EMBED + LLAMA31_8B_NORMS
    assert result["model"]["params"] == params == 8_030_261_248
    bf16 = _method(result, "bf16")
    assert bf16["weight_bytes"] == 2 * params
    # KV cache: K and V, 32 layers, 8 KV heads of 128, 8192 tokens, bf16 = exactly 1 GiB.
    assert bf16["kv_cache_bytes"] == 2 * 32 * 8 * 128 * 8192 * 2 == 2**30
    # Activation estimate: (2 hidden + 3 intermediate) bf16 per token, plus fp32 last-token logits.
    assert bf16["activation_bytes"] == 8192 * (2 * 4096 + 3 * 14336) * 2 + 128256 * 4
    assert bf16["total_bytes"] == bf16["weight_bytes"] + bf16["kv_cache_bytes"] + bf16["activation_bytes"]
    assert bf16["fits"] is True


def _nf4_linear_bytes(rows: int, cols: int, double_quant: bool) -> int:
    """bitsandbytes' saved tensors for one 4-bit linear, written out by hand."""
    n = rows * cols
    codes = n // 2
    quant_map = 16 * 4
    if not double_quant:
        blob = f'{{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [{rows}, {cols}]}}'
        return codes + (n // 64) * 4 + quant_map + len(blob)
    blob = (f'{{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [{rows}, {cols}], '
            f'"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012345678918063641}}')
    absmax_codes = n // 64
    nested_absmax = math.ceil(n / 64 / 256) * 4
    nested_map = 256 * 4
    return codes + absmax_codes + nested_absmax + nested_map + quant_map + len(blob)


@pytest.mark.parametrize("method,double_quant,reference_gb", [("bnb-nf4", False, 6.03), ("bnb-nf4-dq", True, 5.70)])
def test_llama31_8b_nf4_bytes_by_hand(method, double_quant, reference_gb):
    result = plan("Llama-3.1-8B", context=8192, device="cuda", device_memory_bytes=24 * GB, methods=[method])
    row = _method(result, method)
    linears = 32 * sum(_nf4_linear_bytes(r, c, double_quant) for r, c in LLAMA31_8B_LINEARS)
    rest = 2 * (2 * LLAMA31_8B_EMBED + LLAMA31_8B_NORMS)  # bitsandbytes leaves embeddings, lm_head, norms in bf16
    assert row["weight_bytes"] == linears + rest
    # REFERENCE section 1: true bytes about 6.03 GB (nf4) and 5.70 GB (nf4 + double quant), against the
    # 5.59 GB transformers' get_memory_footprint prints for both.
    assert abs(row["weight_bytes"] / GB - reference_gb) < 0.005
    expected_bpw = 4.5 if not double_quant else 4 + 8 / 64 + 32 / (64 * 256)
    assert abs(row["bits_per_weight_quantized"] - expected_bpw) < 0.002
    assert row["resident_weight_bytes"] < row["weight_bytes"]  # no JSON blobs in GPU memory
    assert row["fits"] is True


def test_llama31_8b_int8_bytes_by_hand():
    result = plan("Llama-3.1-8B", device="cuda", device_memory_bytes=8 * GB, methods=["bnb-int8"])
    row = _method(result, "bnb-int8")
    linears = 32 * sum(r * c + 4 * r + 1 for r, c in LLAMA31_8B_LINEARS)  # int8 + fp32 SCB per row + weight_format
    assert row["weight_bytes"] == linears + 2 * (2 * LLAMA31_8B_EMBED + LLAMA31_8B_NORMS)
    assert row["fits"] is False  # 9 GB of weights do not fit 8 GB
    assert row["headroom_bytes"] < 0


def test_quantize_peak_components_for_bitsandbytes_on_gpu():
    result = plan("Llama-3.1-8B", device="cuda", device_memory_bytes=80 * GB, methods=["bnb-nf4"])
    row = _method(result, "bnb-nf4")
    q = row["quantize"]
    assert row["quantize_strategy"] == "streaming-per-tensor" and row["quantize_runs_on"] == "cuda"
    # Streaming from disk: the device holds one linear (14336 x 4096) in bf16 and its 4-bit form, never the model.
    assert q["device_parts"]["the largest linear in the compute dtype (bf16)"] == 14336 * 4096 * 2
    assert row["quantize_peak_bytes"] < 0.2e9
    # The host holds its baseline and the embedding (128256 x 4096 bf16) while it is copied through.
    assert any(v == LLAMA31_8B_EMBED * 2 for v in q["host_parts"].values())
    assert row["quantize_disk_bytes"] >= row["weight_bytes"]


def test_every_recipe_names_its_own_strategy():
    from quantbench.recipes import all_recipes

    strategies = {r.name: r.strategy.name for r in all_recipes()}
    assert strategies["bf16"] == "load-convert"
    assert strategies["bnb-nf4"] == "streaming-per-tensor"
    assert strategies["gptq-w4g128"] == "streaming-layer-by-layer"
    assert strategies["awq-w4g128"] == "streaming-layer-by-layer"
    assert strategies["rtn-w4g128"] == "streaming-per-tensor"
    assert strategies["gguf-q8_0"] == "streaming-per-tensor"
    assert strategies["gguf-q4_k_m"] == "writer-then-llama.cpp"
    families = {r.name: r.family for r in all_recipes()}
    assert (families["rtn-w4g128"], families["gptq-w4g128"], families["awq-w4g128"]) == ("rtn", "gptq", "awq")


# ---------------------------------------------------------------------------------------------------
# Presets and architecture tables against transformers


def test_every_preset_matches_the_model_transformers_builds():
    """Tensor names and shapes of ArchSpec.tensors() for each preset == the state dict of the model
    transformers builds from that config (on the meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in PRESETS:
        config = load_model_config(name).config
        fields = {k: v for k, v in config.items() if k != "model_type"}
        hf_config = AutoConfig.for_model(config["model_type"], **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if hf_config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # one stored tensor, as save_pretrained writes it
        spec = {t.name: t.shape for t in ArchSpec.from_config(config).tensors()}
        assert spec == state, name


PUBLISHED_PARAMS = {  # total parameters as the model cards state them
    "Llama-3.1-8B": (8.03e9, 0.01e9),
    "Llama-3.1-70B": (70.55e9, 0.01e9),
    "Qwen2.5-7B": (7.61e9, 0.01e9),
    "Mistral-7B": (7.25e9, 0.01e9),
    "Gemma-2-9B": (9.24e9, 0.01e9),
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_preset_parameter_counts(name):
    target, tolerance = PUBLISHED_PARAMS[name]
    arch = ArchSpec.from_config(load_model_config(name).config)
    assert abs(arch.num_params() - target) < tolerance


def test_gemma2_config_completed_with_transformers_defaults():
    """Gemma-2's config.json omits tie_word_embeddings; read raw it would wrongly add an lm_head."""
    _, _, raw = find_preset("google/gemma-2-9b")
    assert "tie_word_embeddings" not in raw
    config, _ = complete_config(raw)
    assert config["tie_word_embeddings"] is True
    names = [t.name for t in ArchSpec.from_config(config).tensors()]
    assert "lm_head.weight" not in names
    assert "model.layers.0.pre_feedforward_layernorm.weight" in names
    assert "model.layers.41.post_feedforward_layernorm.weight" in names
    assert sum(n.endswith("layernorm.weight") for n in names) == 42 * 4


@pytest.mark.parametrize("model_type", sorted(LLAMA_FAMILY))
def test_arch_tensors_match_transformers_for_every_family(model_type):
    """The per-model_type norm table (Gemma-2/3 pre/post norms, Qwen3/Gemma-3 q/k norms) against the
    state dict transformers builds, for a small config of each supported model_type."""
    from transformers import AutoConfig, AutoModelForCausalLM

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=100)
    hf_config = AutoConfig.for_model(model_type, **small)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if hf_config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    spec = {t.name: t.shape for t in ArchSpec.from_config(hf_config.to_dict()).tensors()}
    assert spec == state


def test_llama_tensor_order_and_gguf_names_unchanged():
    arch = ArchSpec.from_config(load_model_config("Llama-3.1-8B").config)
    layer0 = [(t.name.removeprefix("model.layers.0."), t.gguf_name) for t in arch.tensors() if t.layer == 0]
    assert layer0 == [
        ("input_layernorm.weight", "blk.0.attn_norm.weight"),
        ("self_attn.q_proj.weight", "blk.0.attn_q.weight"),
        ("self_attn.k_proj.weight", "blk.0.attn_k.weight"),
        ("self_attn.v_proj.weight", "blk.0.attn_v.weight"),
        ("self_attn.o_proj.weight", "blk.0.attn_output.weight"),
        ("mlp.gate_proj.weight", "blk.0.ffn_gate.weight"),
        ("mlp.up_proj.weight", "blk.0.ffn_up.weight"),
        ("mlp.down_proj.weight", "blk.0.ffn_down.weight"),
        ("post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
    ]


def test_gemma2_gguf_norm_names_follow_gguf_py():
    import gguf

    arch = ArchSpec.from_config(load_model_config("Gemma-2-9B").config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA2, arch.num_layers)
    for t in arch.tensors():
        if t.layer is not None and t.name.endswith("norm.weight"):
            assert names.get_name(t.name.removesuffix(".weight")) + ".weight" == t.gguf_name


# ---------------------------------------------------------------------------------------------------
# KV cache against transformers' own cache


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("gemma2", {"sliding_window": 8}), ("mistral", {"sliding_window": 6})])
def test_kv_cache_bytes_match_transformers_cache(model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, vocab_size=64, **extra)
    hf_config = AutoConfig.for_model(model_type, **small)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    context, batch = 20, 3
    with torch.inference_mode():
        out = model(torch.randint(0, 64, (batch, context)), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    from quantbench.runtimes.hf import HFRuntime

    arch = ArchSpec.from_config(hf_config.to_dict())
    assert kv_cache_bytes(arch, context, batch, 4, "transformers") == measured
    if extra:
        assert min(HFRuntime.kv_cache_tokens_per_layer(arch, context)) == extra["sliding_window"] - 1


def test_gemma2_kv_cache_by_hand():
    result = plan("Gemma-2-9B", context=8192, device="cuda", device_memory_bytes=24 * GB, methods=["bf16"])
    # 21 sliding layers hold 4095 tokens, 21 global layers 8192; 8 KV heads of 256, bf16, K and V.
    assert _method(result, "bf16")["kv_cache_bytes"] == (21 * 4095 + 21 * 8192) * 2 * 8 * 256 * 2


# ---------------------------------------------------------------------------------------------------
# Resolution, reporting, CLI


def test_model_resolution(tmp_path):
    _, _, raw = find_preset("Qwen2.5-7B")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    by_folder = load_model_config(str(tmp_path))
    by_file = load_model_config(str(tmp_path / "config.json"))
    by_name = load_model_config("qwen2.5-7b")
    by_hub_id = load_model_config("Qwen/Qwen2.5-7B")  # a preset's hub id resolves offline
    assert by_folder.source == "local folder" and by_file.source == "config.json"
    assert by_name.source == by_hub_id.source == "preset"
    assert by_folder.config["num_hidden_layers"] == by_name.config["num_hidden_layers"] == 28
    with pytest.raises(QuantbenchError, match="preset"):
        load_model_config("no-such-model")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(QuantbenchError, match="Offline.*preset"):
        load_model_config("some-org/some-model-not-cached")


def test_recipe_without_plan_is_reported_not_dropped(monkeypatch):
    from quantbench.recipes import base
    from quantbench.recipes.base import Recipe

    class NoPlan(Recipe):
        name = "test-no-plan"
        family = "test"
        description = "a recipe whose plan_tensor is not written"

    monkeypatch.setitem(base._REGISTRY, "test-no-plan", NoPlan())
    result = plan("Mistral-7B", device="cuda", device_memory_bytes=24 * GB, methods=["bf16", "test-no-plan"])
    assert result["no_plan"] == ["test-no-plan"]
    row = _method(result, "test-no-plan")
    assert row["planned"] is False and "no plan yet" in row["no_plan_reason"]
    from quantbench.report.plan_table import format_table

    assert "NO PLAN YET" in format_table(result)


def test_every_registered_recipe_is_in_the_plan():
    from quantbench.recipes import all_recipes

    result = plan("Llama-3.1-8B", device="cuda", device_memory_bytes=24 * GB)
    assert [r["method"] for r in result["methods"]] == [r.name for r in all_recipes()]
    planned = [r for r in result["methods"] if r["planned"]]
    assert {"fp32", "bf16", "fp16", "bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4"} <= {r["method"] for r in planned}
    for r in planned:
        assert r["weight_bytes"] > 0 and r["quantize_peak_bytes"] > 0
        assert r["total_bytes"] == r["resident_weight_bytes"] + r["kv_cache_bytes"] + r["activation_bytes"]


def test_default_device_memory_is_available_ram_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the default is its free memory")
    import psutil

    result = plan("Mistral-7B", methods=["bf16"])
    assert result["device"] == "cpu" and "RAM" in result["device_memory_source"]
    assert abs(result["device_memory_bytes"] - psutil.virtual_memory().available) < 2 * GB


def test_cli_plan_json(capsys):
    from quantbench.cli.main import main

    assert main(["plan", "Llama-3.1-8B", "--context", "8192", "--device", "cuda", "--device-memory", "24GB",
                 "--methods", "bf16,bnb-nf4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device_memory_bytes"] == 24 * GB
    assert [r["method"] for r in result["methods"]] == ["bf16", "bnb-nf4"]
    for key in ("weight_bytes", "bits_per_weight", "kv_cache_bytes", "total_bytes", "fits", "quantize_peak_bytes"):
        assert key in result["methods"][0]
    assert main(["plan", "Llama-3.1-8B", "--device", "cuda", "--device-memory", "8GiB", "--methods", "bnb-nf4"]) == 0
    table = capsys.readouterr().out
    assert "bnb-nf4" in table and "6.03 GB" in table

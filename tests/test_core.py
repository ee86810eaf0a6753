"""Core measurements against independent oracles: float64 perplexity and KLD, stored bytes, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from quantbench.eval.divergence import QualityAccumulator, log_softmax, token_kld
from quantbench.eval.memory import stored_tensor_bytes
from quantbench.formats.safetensors import tensor_bytes as safetensors_tensor_bytes
from quantbench.eval.perplexity import PerplexityProtocol, make_windows


def test_kld_hand_computed_pair_and_self():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kld = token_kld(p, q)
    assert kld[0].item() == pytest.approx(expected, abs=1e-7)
    assert kld[1].item() == pytest.approx(0.0, abs=1e-7)


def test_windows_cover_protocol():
    ids = list(range(100))
    w = make_windows(ids, PerplexityProtocol(window=10, max_windows=3))
    assert [x.input_ids for x in w] == [list(range(0, 9)), list(range(10, 19)), list(range(20, 29))]
    assert w[0].targets == list(range(1, 10))
    half = make_windows(ids, PerplexityProtocol(window=10, max_windows=1, score_from=5))[0]
    assert half.targets == [6, 7, 8, 9] and half.first_scored == 5
    bos = make_windows(ids, PerplexityProtocol(window=10, max_windows=1, bos_token_id=7))[0]
    assert bos.input_ids == [7] + list(range(9)) and bos.targets == list(range(10))


def test_text_shorter_than_window_is_a_clear_error():
    from quantbench.errors import QuantbenchError

    with pytest.raises(QuantbenchError, match="fewer than one window"):
        make_windows(list(range(10)), PerplexityProtocol(window=64))


def test_perplexity_and_kld_equal_float64_direct_computation(tiny_model):
    """Our streamed PPL/KLD vs a direct float64 loop over every scored token."""
    from transformers import AutoModelForCausalLM

    from quantbench.runtimes.hf import HFRuntime

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    runtime = HFRuntime(model, "cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (200,), generator=g).tolist()
    # Windows cut by hand (not by make_windows, which this checks): slice[:-1] in, slice[1:] scored.
    windows = [SimpleNamespace(input_ids=ids[k * 64 : k * 64 + 63], targets=ids[k * 64 + 1 : k * 64 + 64], first_scored=0)
               for k in range(3)]
    # A perturbed copy of the model as the "quantized" candidate; the lm_head noise moves logits by O(1),
    # so KL(P||Q) and KL(Q||P) differ by far more than the tolerance below.
    other = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for name, p in other.named_parameters():
            p.add_((0.5 if name == "lm_head.weight" else 0.01) * torch.randn(p.shape, generator=g))
    candidate = HFRuntime(other, "cpu")

    acc, self_acc = QualityAccumulator(), QualityAccumulator()
    nll64, kld64, backward64, agree, n = 0.0, [], [], 0, 0
    for w in windows:
        ref = log_softmax(runtime.logits(w.input_ids)[w.first_scored :])
        cand = log_softmax(candidate.logits(w.input_ids)[w.first_scored :])
        targets = torch.tensor(w.targets)
        acc.add(cand, targets, ref)
        self_acc.add(ref, targets, ref)
        with torch.no_grad():
            r64 = torch.log_softmax(model(torch.tensor([w.input_ids])).logits[0].double(), -1)
            c64 = torch.log_softmax(other(torch.tensor([w.input_ids])).logits[0].double(), -1)
        for pos, tok in enumerate(w.targets):
            nll64 -= c64[pos, tok].item()
            kld64.append(sum((r64[pos].exp() * (r64[pos] - c64[pos])).tolist()))
            backward64.append(sum((c64[pos].exp() * (c64[pos] - r64[pos])).tolist()))
            agree += int(r64[pos].argmax() == c64[pos].argmax())
            n += 1
    got = acc.summary()
    assert got["scored_tokens"] == n == 3 * 63
    assert got["ppl"] == pytest.approx(math.exp(nll64 / n), rel=1e-5)
    assert abs(sum(kld64) - sum(backward64)) > 0.05 * sum(kld64)  # the two directions are far apart
    assert got["kld_mean"] == pytest.approx(sum(kld64) / n, rel=1e-4)
    assert got["top1_agreement"] == pytest.approx(agree / n)
    same = self_acc.summary()
    assert same["kld_mean"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0


def test_counted_bytes_equal_bytes_on_disk(tiny_model):
    shard = tiny_model / "model.safetensors"
    counted = sum(safetensors_tensor_bytes(shard).values())
    with open(shard, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    assert counted == shard.stat().st_size - 8 - header_len
    from safetensors.torch import load_file

    tensors = load_file(shard)
    assert counted == sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored_tensor_bytes(tiny_model) == safetensors_tensor_bytes(shard)


def test_bnb_artifact_reloads_and_counts_quant_state(tiny_model, tiny_text_file, tmp_path, isolated_cache):
    """quantize -> plain from_pretrained reloads; stored bytes include absmax and code tables."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "nf4"
    res = run_cli("quantize", str(tiny_model), "--method", "bnb-nf4", "-o", str(out), "--text", str(tiny_text_file), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "bits/weight" in res.stdout
    meta = json.loads((out / "quantbench.json").read_text())
    stored = stored_tensor_bytes(out)
    assert meta["weight_bytes"] == sum(stored.values())
    assert any(k.endswith(".absmax") for k in stored) and any(k.endswith(".quant_map") for k in stored)
    # 4-bit codes + one absmax per 64 + the 16-entry code table: between 4.0 and 5.0 bits per quantized weight.
    assert 4.0 < meta["bits_per_weight_quantized"] < 5.0
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 33]])).logits
    assert torch.isfinite(logits).all()
    assert not list(tmp_path.glob(".nf4.tmp-*"))


def test_compare_on_tiny_model_writes_contract(tiny_model, tiny_text_file, tmp_path, isolated_cache):
    out = tmp_path / "cmp"
    res = run_cli("compare", str(tiny_model), "--methods", "fp32,bf16,bnb-int8", "--text", str(tiny_text_file),
                  "--out", str(out), "--window", "64", "--windows", "4", "--device", "cpu", "--prompt-tokens", "16",
                  "--new-tokens", "4", "--repeats", "2", "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    for key in ("method", "runtime", "device", "bits_per_weight", "weight_bytes", "reported_footprint_bytes", "peak_memory_bytes",
                "ppl", "kld_mean", "kld_p99", "top1_agreement", "prefill_tok_s", "decode_tok_s"):
        assert rows["bnb-int8"][key] is not None, key
    assert rows["fp32"]["kld_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows["fp32"]["ppl"] == pytest.approx(result["protocol"]["reference_ppl"], rel=1e-6)
    assert rows["fp32"]["bits_per_weight"] == pytest.approx(32.0)
    assert rows["bf16"]["bits_per_weight"] == pytest.approx(16.0)
    # Measured here on this tiny random model (200 tokens, float64): bf16 KLD 3.2e-7, int8 3.6e-7, top-1
    # 99 % (its logits are nearly flat, so near-ties flip); the bounds sit about 30x above that.
    for method in ("bf16", "bnb-int8"):
        assert 0 < rows[method]["kld_mean"] < 1e-5, (method, rows[method]["kld_mean"])
        assert rows[method]["top1_agreement"] > 0.9
    for method in ("fp32", "bf16", "bnb-int8"):
        row = rows[method]
        # Tokens/s, not ms or tokens: above 0.5 even for bf16 on a loaded CPU without bf16 units, below a
        # million for a model this size; min <= median <= max; ttft is the median prefill time.
        assert 0.5 < row["decode_tok_s_min"] <= row["decode_tok_s"] <= row["decode_tok_s_max"] < 1e6, row
        assert 0.5 < row["prefill_tok_s_min"] <= row["prefill_tok_s"] <= row["prefill_tok_s_max"] < 1e6, row
        assert row["ttft_s"] == pytest.approx(16 / row["prefill_tok_s"], rel=1e-9)
        # Process peak RSS (CPU): above what Python + torch hold at start, below a few GB for this model.
        assert row["process_baseline_rss_bytes"] < row["peak_memory_bytes"] < 4e9, row
        assert row["peak_memory_bytes"] > 100e6
    params = result["model"]["params"]
    # transformers' own footprint: every parameter at its dtype (plus the small rotary buffer).
    assert 4 * params <= rows["fp32"]["reported_footprint_bytes"] < 4 * params + 4096
    assert 2 * params <= rows["bf16"]["reported_footprint_bytes"] < 2 * params + 4096
    assert result["protocol"]["perplexity"]["window"] == 64
    # Intervals: in every row and the protocol, shown compactly in the table; the recommendation compares
    # its pick with the next candidate paired, on the per-token values the evaluations handed back.
    for method in ("bf16", "bnb-int8"):
        for key in ("ppl", "kld_mean", "top1_agreement"):
            iv = rows[method][f"{key}_interval"]
            assert iv["low"] <= rows[method][key] <= iv["high"] and iv["tokens"] == rows[method]["scored_tokens"], key
    iv = result["protocol"]["reference_ppl_interval"]
    assert iv["low"] < result["protocol"]["reference_ppl"] < iv["high"]
    assert "per_token" not in rows["bf16"] and "block bootstrap" in result["protocol"]["uncertainty"]["method"]
    rec = result["recommendation"]
    # smallest weights among KLD <= 0.05: on this tiny model bf16 and int8 (with its fp16 embeddings) come first
    assert {rec["method"], rec["next_candidate"]} == {"bf16", "bnb-int8"}
    assert rec["comparison"]["versus"] == rec["next_candidate"]
    assert rec["comparison"]["difference"]["tokens"] == rows["bf16"]["scored_tokens"]
    assert "PPL ±95%" in res.stdout and " ±" in (out / "compare.md").read_text()
    assert {"torch", "transformers"} <= set(result["versions"])
    for name in ("compare.json", "compare.md", "compare.csv", "compare.png"):
        assert (out / name).stat().st_size > 0
    ref_files = list((isolated_cache / "reference").glob("*.safetensors"))
    assert len(ref_files) == 1
    # A second run resumes: same reference, artifacts reused (nothing quantized again). With --tasks the
    # table shows task accuracy beside the full-precision model's own, and --rank-by task ranks by it.
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"context": f"Item {k}: the word is", "choices": ["red", "a long answer", "x"],
                                             "answer": k % 3}) for k in range(8)))
    again = run_cli("compare", str(tiny_model), "--methods", "fp32,bnb-int8", "--text", str(tiny_text_file), "--out", str(out),
                    "--window", "64", "--windows", "4", "--device", "cpu", "--no-speed", "--tasks", str(tasks),
                    "--rank-by", "task", "--json", str(tmp_path / "r2.json"))
    assert again.returncode == 0, again.stderr
    assert "measuring" in again.stderr and "quantizing" not in again.stderr
    assert list((isolated_cache / "reference").glob("*.safetensors")) == ref_files
    second = json.loads((tmp_path / "r2.json").read_text())
    rows2 = {r["method"]: r for r in second["rows"]}
    reference_tasks = second["protocol"]["reference_tasks"]
    # fp32 is the reference model itself: the same accuracy on the same items
    assert reference_tasks["task_acc"] == rows2["fp32"]["task_acc"] and reference_tasks["task_items"] == 8
    assert second["recommendation"]["rank_by"] == "task" and second["recommendation"]["comparison"]["difference"]["tokens"] == 8
    assert "task acc % ±95%" in again.stdout and "the full-precision model itself scores" in again.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "/nonexistent/model", "--method", "bnb-nf4", "-o", "X"], "not found"),
        (["compare", "--methods", "no-such-method"], "unknown method"),
        (["eval", "/nonexistent/artifact"], "not found"),
    ],
)
def test_bad_input_one_clear_message(args, message, tmp_path):
    res = run_cli(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_corrupt_safetensors_and_unsupported_architecture(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shard = broken / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    res = run_cli("quantize", str(broken), "--method", "bnb-nf4", "-o", str(tmp_path / "o"))
    assert res.returncode == 2 and "truncated safetensors" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()

    alien = tmp_path / "alien"
    shutil.copytree(tiny_model, alien)
    cfg = json.loads((alien / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (alien / "config.json").write_text(json.dumps(cfg))
    res = run_cli("quantize", str(alien), "--method", "bnb-nf4", "-o", str(tmp_path / "o"))
    assert res.returncode == 2 and "not supported" in res.stderr and "llama" in res.stderr


def test_text_too_short_is_reported(tiny_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short to score.")
    res = run_cli("compare", str(tiny_model), "--methods", "fp32", "--text", str(short), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "fewer than one window" in res.stderr


def test_task_accuracy_matches_direct_loglik(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.eval.tasks import load_tasks, task_accuracy
    from quantbench.runtimes.hf import HFRuntime

    items = [{"context": "The capital of France is", "choices": ["Paris", "a banana split", "blue"], "answer": 0},
             {"question": "Two plus two is", "choices": ["four", "seven"], "answer": 1}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    got = task_accuracy(HFRuntime(model, "cpu"), load_tasks(path, tok))
    correct = 0
    for item in items:
        ctx = tok(item.get("context", item.get("question")), add_special_tokens=False)["input_ids"]
        scores = []
        for choice in item["choices"]:
            c = tok(" " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ctx + c])).logits[0].double(), -1)
            scores.append(sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(c)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    assert got["task_acc"] == correct / len(items) and got["task_items"] == 2
    from quantbench.eval.tasks import PER_ITEM
    from quantbench.eval.uncertainty import wilson_interval

    assert sum(got[PER_ITEM]["task"][0]) == correct and len(got[PER_ITEM]["task"][0]) == 2
    assert (got["task_acc_interval"]["low"], got["task_acc_interval"]["high"]) == pytest.approx(wilson_interval(correct, 2))


def test_recommendation_rule():
    from quantbench.report.recommend import recommend

    # a budget is judged by runtime memory (weights + KV + llama.cpp buffers), not the process peak RSS
    rows = [{"method": "a", "status": "ok", "kld_mean": 0.001, "weight_bytes": 100, "peak_memory_bytes": 10,
             "runtime_memory": {"total": 300}},
            {"method": "b", "status": "ok", "kld_mean": 0.03, "weight_bytes": 40, "peak_memory_bytes": 999,
             "runtime_memory": {"total": 150}},
            {"method": "c", "status": "ok", "kld_mean": 0.3, "weight_bytes": 30, "runtime_memory": {"total": 120}}]
    assert recommend(rows, None)["method"] == "b"
    assert recommend(rows, 200)["method"] == "b"
    assert recommend(rows, 125)["method"] == "c"
    assert recommend(rows, 10)["method"] is None
    assert "runtime memory" in recommend(rows, 200)["rule"]


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    from quantbench.errors import QuantbenchError
    from quantbench.sources.model import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QuantbenchError, match="could not fetch 'someorg/somemodel'.*local folder"):
        resolve_model("someorg/somemodel")


def test_pickle_only_folder_is_refused(tiny_model, tmp_path):
    import shutil

    from quantbench.errors import QuantbenchError
    from quantbench.sources.model import resolve_model

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(QuantbenchError, match="pickle"):
        resolve_model(str(folder))


def test_bnb_guard_refuses_cpu_repacked_absmax(tmp_path):
    from safetensors.torch import save_file

    from quantbench.errors import QuantbenchError
    from quantbench.recipes.bnb import check_saved_absmax

    good = {"l.weight": torch.zeros(32, 1, dtype=torch.uint8), "l.weight.absmax": torch.ones(1), "l.weight.nested_absmax": torch.ones(1)}
    save_file(good, str(tmp_path / "model.safetensors"))
    check_saved_absmax(tmp_path)
    save_file({**good, "l.weight.absmax": torch.ones(1, 1, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(QuantbenchError, match="CPU-repacked"):
        check_saved_absmax(tmp_path)


def test_peak_rss_is_this_process_not_the_parent(tmp_path):
    """A child that allocates little reports far less than a parent that allocated a lot."""
    import subprocess
    import sys

    from quantbench.device import peak_rss_bytes

    ballast = bytearray(600 * 1024 * 1024)  # parent peak >= 600 MB
    ballast[::4096] = b"x" * len(ballast[::4096])
    parent_peak = peak_rss_bytes()
    code = "from quantbench.device import peak_rss_bytes; print(peak_rss_bytes())"
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del ballast
    assert parent_peak > 600e6
    assert child_peak < parent_peak - 400e6


def test_generate_is_greedy_and_matches_transformers(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench import api

    text = api.generate(str(tiny_model), "The meaning of", max_new_tokens=8, device="cpu")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = tok("The meaning of", return_tensors="pt")["input_ids"]
    seq = ids[0].tolist()
    for _ in range(8):  # naive greedy: full forward, argmax, append (no cache)
        with torch.no_grad():
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
        seq.append(nxt)
        if nxt == tok.eos_token_id:
            break
    assert len(seq) - ids.shape[1] == 8  # the oracle ran all 8 steps (no early EOS): a real check
    assert text == tok.decode(seq[ids.shape[1]:], skip_special_tokens=True) and text.strip()
    res = run_cli("generate", str(tiny_model), "The meaning of", "--max-new-tokens", "8", "--device", "cpu")
    assert res.returncode == 0 and res.stdout.strip() == text.strip()


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_model, tmp_path):
    out = tmp_path / "never"
    res = run_cli("quantize", str(tiny_model), "--method", "bnb-nf4", "-o", str(out), "--dry-run", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "bnb-nf4" in res.stdout and "dry run" in res.stdout
    assert not out.exists()

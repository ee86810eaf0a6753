"""Issue 12 on a GPU host: streaming quantize of an 8B-shaped checkpoint from disk, a capped-memory
reference, and `compare` on 2 GPUs against 1. Writes $OUT/streaming.json (and prints each step).

    PYTHONPATH=$PWD python3 benchmarks/streaming_gpu.py [--small]     (--small: a tiny shape, for a CPU try-out)

1. A Llama-3.1-8B-shaped checkpoint with random bf16 weights is written as sharded safetensors
   (numbers drawn on the GPU), with a small BPE tokenizer (ids < 512 fit any vocabulary).
2. `quantbench quantize` (api.quantize: a fresh worker process) with rtn-w4g128 and bnb-nf4 from that
   folder: measured peak RssAnon / RssFile of the worker and torch's peak GPU memory, beside
   `quantbench plan`'s prediction for the same job. Each artifact is deleted after.
3. The reference logits of that model on the GPU, then with accelerate's max_memory capping GPU 0
   below the model's size (the rest offloaded to the CPU), then split over two GPUs: equal logits?
4. `compare` over 4 methods on a smaller random model, with --devices cuda:0 and cuda:0,cuda:1:
   wall-clock of the methods and every quality / byte column.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path(os.environ.get("OUT", "stream-out"))
OUT.mkdir(parents=True, exist_ok=True)
SMALL = "--small" in sys.argv
RESULTS: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "small": SMALL}
WORK = Path(os.environ.get("STREAM_WORK", "/tmp/qb-stream"))


def save() -> None:
    (OUT / "streaming.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def step(name):
    def wrap(fn):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            RESULTS[name] = {**fn(), "seconds": time.perf_counter() - t0}
        except Exception as exc:  # record the failure honestly and go on with the next step
            import traceback

            RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4), "seconds": time.perf_counter() - t0}
        print(json.dumps(RESULTS[name], default=str)[:3000], flush=True)
        save()
        return fn

    return wrap


def tokenizer_into(folder: Path) -> None:
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n\n".join(topics[k] for k in sorted(topics))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[:200_000]], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    (WORK / "text.txt").write_text(text)


def llama_config(small: bool) -> dict:
    from quantbench.presets import find_preset

    _, _, config = find_preset("Llama-3.1-8B")
    config = {**config, "bos_token_id": 1, "eos_token_id": 2}
    if small:
        config.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
    return config


RESULTS["environment"] = {
    "python": sys.version.split()[0], "torch": torch.__version__,
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    "cpus": os.cpu_count(),
}
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
os.environ["QUANTBENCH_CACHE"] = str(WORK / "cache")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG = WORK / "llama-8b-shape"


@step("write_checkpoint")
def _():
    from quantbench.streaming.synthetic import write_random_checkpoint

    write_random_checkpoint(llama_config(SMALL), BIG, torch.bfloat16, device=DEVICE, max_shard_bytes=5 * 2**30)
    tokenizer_into(BIG)
    files = sorted(BIG.glob("*.safetensors"))
    return {"shards": len(files), "bytes": sum(f.stat().st_size for f in files), "disk_free": shutil.disk_usage(WORK).free}


def quantize_vs_plan(method: str) -> dict:
    from quantbench import api
    from quantbench.plan import plan

    out = WORK / f"out-{method}"
    settings = api.Settings(calibration_samples=32, calibration_length=512)
    meta = api.quantize(str(BIG), method, out, text=str(WORK / "text.txt"), device=DEVICE, settings=settings)
    m = meta["metadata"]
    row = plan(str(BIG), methods=[method], device=DEVICE, device_memory_bytes=140 * 10**9)["methods"][0]
    q = row["quantize"]
    predicted_host = row["quantize_host_peak_bytes"]
    predicted_device = row["quantize_peak_bytes"] if row["quantize_runs_on"] != "host" else None
    baseline_plan = q["host_parts"]["process baseline"]
    result = {
        "measured_peak_anon_bytes": m["peak_anon_bytes"],
        "measured_peak_file_bytes": m["peak_file_bytes"],
        "measured_baseline_anon_bytes": m["baseline_anon_bytes"],
        "measured_vm_hwm_bytes": m["peak_hwm_bytes"],
        "measured_peak_device_bytes": m["peak_device_bytes"],
        "plan_host_peak_bytes": predicted_host,
        "plan_host_baseline_bytes": baseline_plan,
        "plan_device_peak_bytes": predicted_device,
        "host_ratio_measured_over_plan": m["peak_anon_bytes"] / predicted_host,
        "host_work_ratio (peak - baseline, measured / plan)": (m["peak_anon_bytes"] - m["baseline_anon_bytes"]) / (predicted_host - baseline_plan),
        "device_ratio_measured_over_plan": (m["peak_device_bytes"] / predicted_device) if predicted_device and m["peak_device_bytes"] else None,
        "quantize_seconds": m.get("quantize_seconds"),
        "artifact_bytes": meta.get("weight_bytes"),
        "plan_artifact_bytes": row["weight_bytes"],
        "plan_disk_bytes": row["quantize_disk_bytes"],
        "resources_checked": meta.get("resources_checked"),
        "plan_budget_lines": q.get("budget_lines"),
        # per phase (same names as the plan's): where a mismatch comes from
        "measured_phase_work_bytes": {k: v - m["baseline_anon_bytes"] for k, v in (m.get("phase_peak_anon_bytes") or {}).items()},
        "plan_phase_host_bytes": {k: sum(t.values()) for k, t in q.get("phases", {}).get("host", {}).items()},
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


for _method in ("rtn-w4g128", "bnb-nf4"):
    step(f"quantize_{_method}")(lambda m=_method: quantize_vs_plan(m))


@step("reference_capped")
def _():
    from quantbench.runtimes.hf import HFRuntime

    ids = torch.randint(3, 512, (2, 512), generator=torch.Generator().manual_seed(0)).tolist()
    model_bytes = sum(f.stat().st_size for f in BIG.glob("*.safetensors"))
    runs = {"uncapped": None, "cuda:0 capped at 6 GiB, rest on the CPU": {0: 6 * 2**30, "cpu": 200 * 2**30}}
    if torch.cuda.device_count() > 1:
        runs["split: cuda:0 9 GiB, cuda:1 the rest"] = {0: 9 * 2**30, 1: 100 * 2**30, "cpu": 200 * 2**30}
    logits, out = {}, {"model_bytes": model_bytes}
    for name, cap in runs.items():
        if SMALL and cap:
            cap = {0: 1 * 2**20, "cpu": 10 * 2**30} if DEVICE == "cuda" else None
        t0 = time.perf_counter()
        torch.cuda.reset_peak_memory_stats() if DEVICE == "cuda" else None
        runtime = HFRuntime.load(BIG, DEVICE, max_memory=cap)
        logits[name] = [runtime.logits(window) for window in ids]
        placement = runtime.placement or {}
        out[name] = {
            "seconds": time.perf_counter() - t0,
            "max_memory": cap,
            "devices_used": sorted({str(v) for v in placement.values()}) if placement else [DEVICE],
            "peak_gpu0_bytes": torch.cuda.max_memory_allocated(0) if DEVICE == "cuda" else None,
        }
        runtime.close()
        del runtime
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
    base = logits["uncapped"]
    for name in runs:
        out[name]["logits_equal_to_uncapped"] = all(torch.equal(a, b) for a, b in zip(base, logits[name]))
        out[name]["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(base, logits[name]))
    return out


shutil.rmtree(BIG, ignore_errors=True)  # 16 GB: not needed below


@step("compare_devices")
def _():
    from quantbench.streaming.synthetic import write_random_checkpoint

    small = WORK / "compare-model"
    config = llama_config(True) if SMALL else {**llama_config(False), "hidden_size": 2048, "intermediate_size": 8192,
                                               "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}
    write_random_checkpoint(config, small, torch.bfloat16, device=DEVICE)
    tokenizer_into(small)
    methods = "bf16,bnb-nf4,bnb-int8,rtn-w4g128"
    runs = {"1 GPU": "cuda:0", "2 GPUs": "cuda:0,cuda:1"} if torch.cuda.device_count() > 1 else {"1 GPU": None}
    tables, out = {}, {"methods": methods}
    for name, devices in runs.items():
        folder = WORK / f"compare-{name.replace(' ', '')}"
        cmd = [sys.executable, "-m", "quantbench.cli.main", "compare", str(small), "--methods", methods, "--text", str(WORK / "text.txt"),
               "--out", str(folder), "--no-speed", "--windows", "4", "--device", DEVICE]
        if devices:
            cmd += ["--devices", devices]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        wall = time.perf_counter() - t0
        if not (folder / "compare.json").is_file():
            out[name] = {"error": proc.stderr[-2000:]}
            continue
        result = json.loads((folder / "compare.json").read_text())  # written before the plot (matplotlib may be absent)
        tables[name] = {r["method"]: r for r in result["rows"]}
        out[name] = {"command": " ".join(cmd[1:]), "wall_seconds": wall, "methods_wall_seconds": result["methods_wall_seconds"],
                     "devices": result["devices"], "gpu_of_each_method": {r["method"]: r.get("gpu") for r in result["rows"]},
                     "status": {r["method"]: r.get("status") for r in result["rows"]}, "returncode": proc.returncode,
                     "stderr_tail": proc.stderr[-600:] if proc.returncode else ""}
    if len(tables) == 2:
        columns = ("ppl", "kld_mean", "top1_agreement", "weight_bytes", "bits_per_weight")
        one, two = tables["1 GPU"], tables["2 GPUs"]
        out["identical_columns"] = {m: {c: one[m].get(c) == two[m].get(c) for c in columns if c in one[m]} for m in one}
        out["values"] = {m: {c: one[m].get(c) for c in columns if c in one[m]} for m in one}
        out["wall_ratio_methods (2 GPUs / 1 GPU)"] = out["2 GPUs"]["methods_wall_seconds"] / out["1 GPU"]["methods_wall_seconds"]
    return out


shutil.rmtree(WORK, ignore_errors=True)
print("done", flush=True)

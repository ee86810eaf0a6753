"""Device check: rtn/gptq/awq recipes quantize on CUDA, and their artifacts open in quantbench's HF runtime
on CUDA with logits matching the CPU runtime. Tiny random Llama (hidden 256, 4 layers), built here.

    PYTHONPATH=. python benchmarks/gptq_cuda_check.py     (needs compressed-tensors)
"""
import json, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_tiny_llama, tiny_text
from transformers import AutoTokenizer
from quantbench.recipes import get_recipe
from quantbench.recipes.base import QuantizeJob
from quantbench.sources.model import resolve_model
from quantbench.sources.text import calibration_samples, split_tokens
from quantbench.formats.compressed_tensors import read_linears
tmp = Path(tempfile.mkdtemp())
folder = build_tiny_llama(tmp / "tiny", hidden=256, layers=4, ffn=512)
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(tiny_text()[:80000])["input_ids"]
sp = split_tokens(ids, 0.5)
src = resolve_model(str(folder))
ev = sp.evaluation[:200]
for name in ["rtn-w4g128", "gptq-w4g128", "gptq-w4g128-act", "awq-w4g128"]:
    r = get_recipe(name)
    out = {}
    for dev in ["cuda", "cpu"]:
        job = QuantizeJob(src, tmp / f"{name}-{dev}", dev, lambda: calibration_samples(sp.calibration, 8, 128), {"calibration_samples": 8, "calibration_length": 128})
        t = time.perf_counter(); meta = r.quantize(job); out[dev] = (job.out_dir, time.perf_counter() - t, meta)
    a, _ = read_linears(out["cuda"][0]); b, _ = read_linears(out["cpu"][0])
    same = sum(float((a[k] == b[k]).float().mean()) for k in a) / len(a)
    rt_gpu = r.open(out["cuda"][0], "cuda"); rt_cpu = r.open(out["cuda"][0], "cpu")
    lg, lc = rt_gpu.logits(ev), rt_cpu.logits(ev)
    print(json.dumps({"method": name, "cuda_quantize_s": round(out["cuda"][1], 2), "peak_device_bytes": out["cuda"][2].get("peak_device_bytes"),
        "fraction_equal_weights_cuda_vs_cpu_quantized": round(same, 4), "runtime_dtype_cuda": rt_gpu.dtype, "runtime_device": rt_gpu.device,
        "logits_max_abs_diff_cuda_vs_cpu": float((lg - lc).abs().max()), "logit_scale": float(lc.abs().max()),
        "top1_agreement": float((lg.argmax(-1) == lc.argmax(-1)).float().mean())}), flush=True)

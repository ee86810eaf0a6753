"""Cross-check our GPTQ against GPTQModel 7.6.0 on the default model with the same calibration.

Both quantize SmolLM2-135M to 4 bits, asymmetric, group 64 (what gptq-w4g128 becomes on this model,
whose 576-wide linears a group of 128 does not tile), damping 1%, no act-order, true sequential,
from the same 32 x 512 tokens of the calibration split; both are scored on the same 8 windows of
512 tokens of the evaluation split (benchmarks/gptq_quality.py's protocol).

GPTQModel is installed in a separate virtual environment so that the main one is untouched:

    python -m venv --system-site-packages /tmp/xcheck && /tmp/xcheck/bin/pip install gptqmodel==7.6.0
    GPTQMODEL_CPU_WORKERS=2 /tmp/xcheck/bin/python benchmarks/gptq_crosscheck.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gptq_quality import score, token_splits  # noqa: E402


class _Logits:
    """The one method of quantbench's Runtime that `score` uses, for a plain HF-style model."""

    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def logits(self, ids):
        return self.model(torch.tensor([list(ids)])).logits[0].float().cpu()


def gptqmodel_ppl(source, samples, evaluation, windows, group_size) -> dict:
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(bits=4, group_size=group_size, desc_act=False, sym=False, damp_percent=0.01, true_sequential=True, act_group_aware=False)
    calibration = [{"input_ids": s, "attention_mask": [1] * len(s)} for s in samples]
    start = time.perf_counter()
    model = GPTQModel.load(str(source.path), config, device="cpu")
    model.quantize(calibration, batch_size=1)
    out = Path(tempfile.mkdtemp(prefix="xcheck-")) / "gptqmodel"
    model.save(str(out))
    seconds = time.perf_counter() - start
    del model
    reloaded = GPTQModel.load(str(out), device="cpu")
    return {"method": f"gptqmodel-7.6.0 w4g{group_size}", "quantize_seconds": seconds, **score(_Logits(reloaded.model), evaluation, windows)}


def ours_ppl(source, samples, evaluation, windows, group_size) -> dict:
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob

    recipe = get_recipe(f"gptq-w4g{group_size}")
    out = Path(tempfile.mkdtemp(prefix="xcheck-")) / "ours"
    job = QuantizeJob(source=source, out_dir=out, device="cpu", calibration=lambda: samples, options={"calibration_samples": len(samples), "calibration_length": len(samples[0])})
    meta = recipe.quantize(job)
    return {"method": f"quantbench gptq-w4g{group_size}", "quantize_seconds": meta["quantize_seconds"], **score(recipe.open(out, "cpu"), evaluation, windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import calibration_samples

    source = resolve_model(None)
    splits = token_splits(source)
    samples = calibration_samples(splits.calibration, args.samples, args.length)
    rows = [gptqmodel_ppl(source, samples, splits.evaluation, args.windows, args.group_size)]
    print(json.dumps(rows[-1]), flush=True)
    if not args.skip_ours:
        rows.append(ours_ppl(source, samples, splits.evaluation, args.windows, args.group_size))
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()

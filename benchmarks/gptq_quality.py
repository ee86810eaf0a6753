"""Perplexity, time and peak memory of fp32 / RTN / GPTQ / AWQ on the default model, on CPU.

Protocol: the default Wikipedia text tokenized by the model's tokenizer, split 25% calibration / 75%
evaluation (quantbench.sources.text.split_tokens); calibration = the first `--samples` segments of
`--length` tokens of the calibration split; perplexity = `--windows` non-overlapping windows of 512
tokens from the start of the evaluation split, every next-token prediction scored, no BOS
(quantbench.eval.perplexity's default protocol). Each method quantizes in its own process so that
the peak resident memory is that method's.

    python benchmarks/gptq_quality.py --methods fp32 rtn-w4g128 gptq-w4g128 gptq-w3g128 awq-w4g128
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def token_splits(source):
    from transformers import AutoTokenizer

    from quantbench.sources.text import load_text, split_tokens

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    ids = tokenizer(load_text(None).content)["input_ids"]
    return split_tokens(ids, 0.25)


def score(runtime, evaluation: list[int], windows: int) -> dict:
    from quantbench.eval.perplexity import PerplexityProtocol, make_windows

    protocol = PerplexityProtocol(window=512, max_windows=windows)
    nll, scored = 0.0, 0
    for w in make_windows(evaluation, protocol):
        logits = runtime.logits(w.input_ids)[w.first_scored :].double()
        targets = torch.tensor(w.targets)
        nll += float(torch.nn.functional.cross_entropy(logits[: len(targets)], targets, reduction="sum"))
        scored += len(targets)
    return {"ppl": math.exp(nll / scored), "scored_tokens": scored, "protocol": protocol.describe()}


def one(method: str, args) -> dict:
    from quantbench.recipes.base import QuantizeJob, get_recipe
    from quantbench.runtimes.hf import HFRuntime
    from quantbench.sources.model import resolve_model
    from quantbench.sources.text import calibration_samples

    torch.set_num_threads(args.threads)
    source = resolve_model(None)
    splits = token_splits(source)
    if method == "fp32":
        runtime = HFRuntime.load(source.path, "cpu", dtype=torch.float32)
        return {"method": method, **score(runtime, splits.evaluation, args.windows)}
    recipe = get_recipe(method)
    out = Path(tempfile.mkdtemp(prefix="qb-bench-")) / method
    job = QuantizeJob(
        source=source,
        out_dir=out,
        device="cpu",
        calibration=lambda: calibration_samples(splits.calibration, args.samples, args.length),
        options={"calibration_samples": args.samples, "calibration_length": args.length},
    )
    start = time.perf_counter()
    meta = recipe.quantize(job)
    wall = time.perf_counter() - start
    runtime = recipe.open(out, "cpu")
    result = {
        "method": method,
        **score(runtime, splits.evaluation, args.windows),
        "quantize_wall_seconds": wall,
        "quantize_seconds": meta.get("quantize_seconds"),
        "peak_rss_bytes": meta.get("peak_rss_bytes"),
        "group_size": meta.get("group_size"),
        "stored_tensor_bytes": meta.get("stored_tensor_bytes"),
        "calibration": meta.get("calibration"),
    }
    if "layer_errors" in meta:
        errors = meta["layer_errors"]
        result["layer_error_mean"], result["rtn_layer_error_mean"] = errors["mean"], errors["mean_rtn"]
        result["linears_worse_than_rtn"] = len(errors["worse_than_rtn"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["fp32", "rtn-w4g128", "gptq-w4g128", "gptq-w3g128", "awq-w4g128"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: small ops on a shared 2-core machine)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    results = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--one", method, "--samples", str(args.samples), "--length", str(args.length), "--windows", str(args.windows), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"method": method, "error": proc.stderr[-2000:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

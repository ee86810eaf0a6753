"""Verification of `quantbench fit` (issue 11): at the exact byte sizes of uniform -imat types, does the
fitted GGUF have lower mean KLD than the uniform type on the EVALUATION split?

For each uniform type T in Q3_K_M, IQ4_XS, Q4_K_M, Q5_K_M (quantbench's -imat recipes):
- quantize T with the importance matrix; its tensor bytes are W_T;
- fit with budget = W_T + KV cache (F16, fixed: the uniform file runs with F16 too) + llama.cpp buffers at
  context 512, so the fitted weights get at most W_T bytes;
- score both with llama.cpp on the same evaluation windows against the same fp32 reference, per token;
- report each mean KLD with its block-bootstrap 95% interval, the paired difference fit - uniform with its
  interval, the predicted KLD of both, and the sensitivity's estimate-vs-direct rank correlation.
Then the same with Q4_1 excluded from fit's candidates (the default model's weights sit on a Q4_1 grid);
`--exclude-sets` names other variants (Q5_1 holds the Q4_1 grid exactly, so ',Q4_1,Q4_1+Q5_1' also
takes it away). `--model` runs it on another model (e.g. Gemma-3-270m's Q4_K_M GGUF, whose weights sit
on its own Q4_K_M grid: ',Q4_K' takes that grid's type away).

Rerun: PYTHONPATH=. python3 benchmarks/fit_verify.py --windows 8 --out benchmarks/results/fit-verify
CPU only. The sensitivity table is cached (~/.cache/quantbench/fit), so the second pass reuses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CONTEXT = 512


def per_token_kld(path: Path, work, reference, windows: int) -> list[np.ndarray]:
    from quantbench.eval.divergence import log_softmax, token_kld
    from quantbench.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(path)
    try:
        out = []
        for k, w in enumerate(work.windows[:windows]):
            logits = runtime.logits(w.input_ids)[w.first_scored :]
            out.append(token_kld(reference.logprobs(k), log_softmax(logits)).numpy())
        return out
    finally:
        runtime.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="MODEL as quantbench takes it (default: the default model)")
    parser.add_argument("--windows", type=int, default=8, help="evaluation windows of 512 tokens scored")
    parser.add_argument("--reference-windows", type=int, default=16,
                        help="windows of the cached reference protocol (the first --windows of them are scored)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit-verify"))
    parser.add_argument("--types", default="Q4_K_M,IQ4_XS,Q3_K_M,Q5_K_M", help="uniform -imat types, in run order")
    parser.add_argument("--exclude-sets", default=",Q4_1",
                        help="fit variants: comma-separated sets of excluded types, each '+'-joined ('' = all types); "
                             "e.g. ',Q4_1,Q4_1+Q5_1' (Q5_1 holds the Q4_1 grid exactly: d' = d, m' = m)")
    args = parser.parse_args()

    from quantbench import api
    from quantbench.eval.perplexity import PerplexityProtocol
    from quantbench.eval.reference import Reference
    from quantbench.eval.uncertainty import mean_interval, paired_difference
    from quantbench.fit.pipeline import FitConfig, fit_model, prepare_fit
    from quantbench.fit.sensitivity import SensitivitySettings

    # Smaller than fit's defaults (4 Fisher windows of 512, 8 tensors x 2 types measured directly): this
    # machine's 2 cores are shared (load 8-25 while it ran); the table took 27 min at load ~8.
    SENSITIVITY = SensitivitySettings(fisher_sequences=2, fisher_tokens=256, direct_tensors=8, direct_levels=1)
    from quantbench.report.frontier import plot_frontier

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = api.Settings(protocol=PerplexityProtocol(window=512, max_windows=args.reference_windows), measure_speed=False)
    work = api.prepare(args.model, None, settings)
    reference, ref_ppl = None, None

    def scored(path: Path) -> list[np.ndarray]:
        nonlocal reference, ref_ppl
        if reference is None:  # only now: the artifacts and the sensitivities do not need it
            say(f"reference on {len(work.windows)} evaluation windows")
            ref_path, ref_ppl = api.ensure_reference(work, "cpu")
            reference = Reference(ref_path)
        return per_token_kld(path, work, reference, args.windows)

    setup = prepare_fit(work, FitConfig(budget_bytes=1, context=CONTEXT, kv_cache_types=("F16",)))
    runtime_bytes = sum(setup.runtime["F16"])  # KV cache + llama.cpp buffers: the same for both files
    runs, frontiers, sens = [], {}, None
    # Ordered so that what finishes first is the most informative: per size, the uniform file, then fit
    # with all types, then fit without Q4_1; the JSON and the table are rewritten after every run.
    for t in args.types.split(","):
        method = f"gguf-{t.lower()}-imat"
        art = args.out / "artifacts" / method
        if not (art / "model.gguf").is_file():
            say(f"quantizing {method}")
            api.quantize_to(work, method, art, "cpu")
        meta = json.loads((art / "quantbench.json").read_text())
        weights = meta["metadata"]["tensor_bytes"] if "metadata" in meta else meta["tensor_bytes"]
        say(f"scoring {method}")
        uniform_kld = None
        for exclude in [tuple(x for x in group.split("+") if x) for group in args.exclude_sets.split(",")]:
            tag = "all types" if not exclude else " and ".join(exclude) + " excluded"
            out = args.out / ("fit-" + t.lower() + "".join("-no-" + x.lower() for x in exclude) + ".gguf")
            budget = weights + runtime_bytes
            say(f"fit at the size of {t}-imat ({tag}): budget {budget:,} B")
            report = fit_model(work, FitConfig(budget_bytes=budget, context=CONTEXT, kv_cache_types=("F16",),
                                               exclude_types=exclude, sensitivity=SENSITIVITY), out, "cpu", say)
            if uniform_kld is None:
                say(f"scoring {method}")
                uniform_kld = scored(art / "model.gguf")
            say(f"scoring {out.name}")
            kld = scored(out)
            diff = paired_difference(kld, uniform_kld)
            uni_pred = next((p["predicted_kld"] for p in report["frontier"]["uniform"] if p["name"] == f"{t}-imat"), None)
            runs.append({
                "uniform": f"{t}-imat", "candidates": tag, "budget_bytes": budget,
                "uniform_weights_bytes": weights, "fit_weights_bytes": report["weights_bytes"],
                "fit_tensor_types": report["tensor_types"], "fit_plan_origin": report["plan_origin"],
                "predicted_fit_activation_rounding": report["sensitivity"]["activation_rounding"]["plan"],
                "uniform_kld": mean_interval(uniform_kld).to_dict(), "fit_kld": mean_interval(kld).to_dict(),
                "difference_fit_minus_uniform": diff.to_dict(), "fit_better": diff.high < 0,
                "predicted_fit_kld": report["predicted_kld"], "predicted_uniform_kld": uni_pred,
                "spearman_estimate_vs_direct": report["sensitivity"]["spearman"],
                "spearman_within_type": report["sensitivity"]["spearman_within_type"],
                "direct_measurements": len(report["sensitivity"]["direct"]),
            })
            frontiers[tag] = report["frontier"]
            sens = report["sensitivity"]
            say(f"{t} ({tag}): uniform {runs[-1]['uniform_kld']['estimate']:.5f}, fit {runs[-1]['fit_kld']['estimate']:.5f}, "
                f"diff {diff.estimate:+.5f} [{diff.low:+.5f}, {diff.high:+.5f}]")
            write_results(args, work, settings, ref_ppl, runs, sens, frontiers, runtime_bytes, started, plot_frontier)
    return 0


def write_results(args, work, settings, ref_ppl, runs, sens, frontiers, runtime_bytes, started, plot_frontier) -> None:
    from quantbench.artifact import versions

    for tag, frontier in frontiers.items():
        for p in frontier["uniform"]:
            for r in runs:
                if r["uniform"] == p["name"] and r["candidates"] == tag:
                    p["measured_kld"] = r["uniform_kld"]["estimate"]
                    p["ci95"] = (r["uniform_kld"]["low"], r["uniform_kld"]["high"])
        frontier["fitted"] = [{"name": "fit@" + r["uniform"].removesuffix("-imat"), "total_bytes": r["fit_weights_bytes"] + runtime_bytes,
                               "measured_kld": r["fit_kld"]["estimate"], "ci95": (r["fit_kld"]["low"], r["fit_kld"]["high"])}
                              for r in runs if r["candidates"] == tag]
        name = "frontier.png" if tag == "all types" else "frontier-no-" + tag.removesuffix(" excluded").replace(" and ", "-").lower() + ".png"
        plot_frontier(frontier, args.out / name, title=f"{Path(work.source.name).name.removesuffix('.gguf')}, fit ({tag}) vs uniform -imat, evaluation split")

    result = {"model": work.source.name, "text": work.text.name, "protocol": settings.protocol.describe(),
              "scored_windows": args.windows, "scored_tokens": sum(len(w.targets) for w in work.windows[: args.windows]),
              "reference_ppl": ref_ppl, "context": CONTEXT, "kv_cache_type": "F16", "runs": runs,
              "sensitivity": {k: sens[k] for k in ("scale", "spearman", "spearman_within_type", "direct", "kv_cost", "tokens", "settings", "seconds",
                                                        "activation_rounding")},
              "frontiers": frontiers, "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "seconds": time.perf_counter() - started, "device": "cpu (2 shared cores)"}
    (args.out / "fit_verify.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "fit_verify.md").write_text(markdown(result) + "\n")


def markdown(result: dict) -> str:
    lines = ["| candidates | size of | weights uniform / fit (B) | uniform KLD [95% CI] | fit KLD [95% CI] | fit - uniform [95% CI] | "
             "predicted uniform / fit | fit better | fit's plan from |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda i: f"{i['estimate']:.5f} [{i['low']:.5f}, {i['high']:.5f}]"  # noqa: E731
    for r in result["runs"]:
        pu = f"{r['predicted_uniform_kld']:.5f}" if r["predicted_uniform_kld"] is not None else "-"
        lines.append(f"| {r['candidates']} | {r['uniform']} | {r['uniform_weights_bytes']:,} / {r['fit_weights_bytes']:,} | "
                     f"{f(r['uniform_kld'])} | {f(r['fit_kld'])} | {r['difference_fit_minus_uniform']['estimate']:+.5f} "
                     f"[{r['difference_fit_minus_uniform']['low']:+.5f}, {r['difference_fit_minus_uniform']['high']:+.5f}] | "
                     f"{pu} / {r['predicted_fit_kld']:.5f} | {'yes' if r['fit_better'] else 'no'} | {r['fit_plan_origin']} |")
    s = result["sensitivity"]
    lines.append("")
    lines.append(f"Estimate vs direct rank correlation (Spearman): {s['spearman']:.3f} over {len(s['direct'])} direct measurements"
                 + (f"; within one type: {s['spearman_within_type']:.3f}" if s["spearman_within_type"] is not None else "")
                 + f"; scale direct/estimate {s['scale']:.3f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

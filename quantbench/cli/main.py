"""`quantbench`: one entry point, subcommands, long kebab-case flags. Thin: parse, call the API, print.

The CLI imports nothing of quantbench but the API (quantbench.api); defaults come from there too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from quantbench import api
from quantbench.cli import bench_cmd, fit_cmd, plan_cmd
from quantbench.cli.common import Progress, add_measure_flags, add_model_argument, method_list, parse_bytes, settings_from


def cmd_methods(args) -> int:
    rows = api.methods(args.device)
    device = rows[0]["device"] if rows else args.device
    print(f"{'method':24} {'family':14} {'runtime':12} {'on ' + device:10}  description")
    for r in rows:
        reason = r["unavailable_reason"]
        print(f"{r['method']:24} {r['family']:14} {r['runtime']:12} {'yes' if not reason else 'no':10}  {r['description']}"
              + (f"  [{reason}]" if reason else ""))
    return 0


def _dry_run(args, methods: list[str] | None) -> int:
    """Print what would be written (exact bytes, bits/weight, memory to quantize) and stop."""
    device = None if args.device == "auto" else args.device
    print(api.format_plan(api.plan(args.model, methods=api.resolve_methods(methods), device=device,
                                   calibration_samples=args.calibration_samples,
                                   calibration_length=args.calibration_length)))
    print("dry run: nothing quantized or measured")
    return 0


def cmd_quantize(args) -> int:
    if args.dry_run:
        return _dry_run(args, [args.method])
    meta = api.quantize(args.model, args.method, Path(args.output), text=args.text, device=args.device, settings=settings_from(args))
    bpw_q = meta.get("bits_per_weight_quantized")
    print(f"wrote {args.output}: {meta['weight_bytes'] / 1e6:.2f} MB stored tensor bytes, "
          f"{meta['bits_per_weight']:.3f} bits/weight over the whole model"
          + (f", {bpw_q:.3f} over the quantized tensors" if bpw_q else "")
          + f" (read back from the written files); quantized in {meta['quantize_seconds']:.1f}s")
    return 0


def cmd_eval(args) -> int:
    row = api.evaluate(Path(args.artifact), args.reference, text=args.text, device=args.device, settings=settings_from(args),
                       tasks_file=args.tasks)
    print(json.dumps(row, indent=2, default=str) if args.json else api.format_row(row))
    return 0


def cmd_compare(args) -> int:
    methods = method_list(args.methods)
    if args.dry_run:
        return _dry_run(args, methods)
    result = api.compare(args.model, methods, text=args.text, out_dir=Path(args.out), device=args.device,
                         settings=settings_from(args), tasks_file=args.tasks, memory_budget_bytes=args.memory_budget,
                         progress=Progress(), context=args.context, devices=method_list(args.devices), rank_by=args.rank_by)
    written = api.write_report(result, Path(args.out), Path(args.json) if args.json else None)
    print(api.format_compare(result))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if any(r.get("status") == "ok" for r in result["rows"]) else 1


def cmd_generate(args) -> int:
    print(api.generate(args.artifact, args.prompt, args.max_new_tokens, device=args.device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description="Which quantization should I use for this model, on this machine, for my task?")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list methods and whether this machine can run them")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("quantize", help="write a quantized artifact")
    add_model_argument(p)
    p.add_argument("--method", required=True, help="a name from `quantbench methods`")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (written atomically); for a gguf-* method a path ending in .gguf writes one GGUF file")
    add_measure_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (bytes, bits/weight, memory) and stop")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="measure one artifact against the full-precision reference")
    p.add_argument("artifact", help="artifact folder, HF folder or .gguf file")
    p.add_argument("--reference", help="reference model (default: the artifact's source model)")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    add_measure_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="every method, one table, a plot and a recommendation")
    add_model_argument(p)
    p.add_argument("--methods", help=f"comma-separated names, or 'all' (default: {','.join(api.DEFAULT_METHODS)})")
    p.add_argument("--out", default="quantbench-out", help="folder for artifacts, JSON, Markdown, CSV and the plot")
    p.add_argument("--json", help="also write the JSON result here")
    p.add_argument("--memory-budget", type=parse_bytes,
                   help="recommend the best method whose runtime memory (weights + KV cache at --context + llama.cpp's "
                   "buffers) fits, e.g. 1GB; with --methods ...,fit also builds quantbench fit's GGUF for it")
    p.add_argument("--rank-by", choices=api.RANK_BY, default="kld",
                   help="the recommendation ranks by mean KLD (default) or by accuracy on --tasks ('task')")
    p.add_argument("--context", type=int, default=api.PLAN_CONTEXT,
                   help=f"context the --memory-budget must hold (default {api.PLAN_CONTEXT})")
    p.add_argument("--devices", help="GPUs to run methods on concurrently, one fresh process each, e.g. cuda:0,cuda:1 "
                                     "(default with --device cuda/auto: every visible GPU)")
    add_measure_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (bytes, bits/weight, memory) and stop")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("generate", help="greedy completion with any artifact")
    p.add_argument("artifact", nargs="?", help="artifact folder, HF folder or .gguf (default: built-in model)")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    plan_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    fit_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except api.QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`quantbench`: one entry point, subcommands, long kebab-case flags. Thin: parse, call the API, print."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from pathlib import Path

from quantbench.errors import QuantbenchError

# Subcommands contributed by other modules: each exposes add_parser(subparsers).
EXTRA_COMMANDS = ("quantbench.cli.plan_cmd", "quantbench.cli.bench_cmd", "quantbench.cli.fit_cmd")


def parse_bytes(text: str) -> int:
    """'24GB', '24GiB', '512MB', '1e9' -> bytes (GB = 1e9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B?)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 24GB, 24GiB or 512MB")
    unit = (m.group(2) or "").upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def parse_max_memory(text: str) -> dict:
    """'cuda:0=10GB,cuda:1=80GB,cpu=200GB' -> accelerate's max_memory {0: bytes, 1: bytes, "cpu": bytes}."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, amount = part.partition("=")
        name = name.strip()
        if not amount or not (name == "cpu" or (name.startswith("cuda:") and name[5:].isdigit())):
            raise argparse.ArgumentTypeError(f"'{text}': write DEVICE=SIZE pairs, e.g. cuda:0=10GB,cpu=100GB")
        out["cpu" if name == "cpu" else int(name[5:])] = parse_bytes(amount)
    return out


def _add_measure_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", help="text file to calibrate and score on (default: built-in Wikipedia excerpt)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)")
    p.add_argument("--window", type=int, default=512, help="perplexity window in tokens (default 512)")
    p.add_argument("--windows", type=int, default=4, help="how many evaluation windows to score (default 4)")
    p.add_argument("--score-from", type=int, default=0, help="score only positions >= this in each window (llama.cpp: window/2)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS to every window")
    p.add_argument("--calibration-samples", type=int, default=32, help="calibration sequences (GPTQ, AWQ, imatrix)")
    p.add_argument("--calibration-length", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill speed")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens decoded for decode speed")
    p.add_argument("--batch", type=int, default=1, help="batch size for speed")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--no-speed", action="store_true", help="skip speed measurement")
    p.add_argument("--tasks", type=Path, help="JSONL of multiple-choice items {context, choices, answer}")
    p.add_argument("--runtime", default="auto", choices=("auto", "transformers", "llama.cpp", "quantbench"),
                   help="runtime that measures each artifact (default auto: quantbench's CUDA-graph runtime on CUDA for "
                   "every family it runs, llama.cpp for GGUF, transformers on a CPU)")
    p.add_argument("--max-memory", type=parse_max_memory, help="cap per device for the full-precision reference, e.g. "
                   "cuda:0=10GB,cuda:1=40GB,cpu=200GB: the model is split across the GPUs and the rest streamed from the CPU "
                   "(accelerate's max_memory); for models larger than one GPU")


def _settings(args):
    from quantbench.api import Settings
    from quantbench.eval.perplexity import PerplexityProtocol

    bos = -1 if args.add_bos else None  # -1: api.prepare substitutes the tokenizer's BOS id
    protocol = PerplexityProtocol(window=args.window, max_windows=args.windows, score_from=args.score_from, bos_token_id=bos)
    return Settings(protocol=protocol, calibration_samples=args.calibration_samples, calibration_length=args.calibration_length,
                    prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch=args.batch, repeats=args.repeats,
                    measure_speed=not args.no_speed, runtime=None if args.runtime == "auto" else args.runtime,
                    max_memory=args.max_memory)


def _progress(message: str) -> None:
    print(f"quantbench: {message}", file=sys.stderr, flush=True)


def cmd_methods(args) -> int:
    from quantbench.recipes import all_recipes
    from quantbench.device import resolve_device

    device = resolve_device(args.device)
    print(f"{'method':24} {'family':14} {'runtime':12} {'on ' + device:10}  description")
    for r in all_recipes():
        reason = r.unavailable_reason(device)
        print(f"{r.name:24} {r.family:14} {r.runtime:12} {'yes' if not reason else 'no':10}  {r.description}"
              + (f"  [{reason}]" if reason else ""))
    return 0


def _dry_run(args, methods: list[str] | None) -> int:
    """Print what would be written (exact bytes, bits/weight, memory to quantize) and stop."""
    from quantbench import api
    from quantbench.plan import plan
    from quantbench.report.plan_table import format_table

    names = api.resolve_methods(methods)
    device = None if args.device == "auto" else args.device
    print(format_table(plan(args.model, methods=names, device=device, calibration_samples=args.calibration_samples,
                            calibration_length=args.calibration_length)))
    print("dry run: nothing quantized or measured")
    return 0


def cmd_quantize(args) -> int:
    from quantbench import api

    if args.dry_run:
        return _dry_run(args, [args.method])

    meta = api.quantize(args.model, args.method, Path(args.output), text=args.text, device=args.device, settings=_settings(args))
    bpw_q = meta.get("bits_per_weight_quantized")
    print(f"wrote {args.output}: {meta['weight_bytes'] / 1e6:.2f} MB stored tensor bytes, "
          f"{meta['bits_per_weight']:.3f} bits/weight over the whole model"
          + (f", {bpw_q:.3f} over the quantized tensors" if bpw_q else "")
          + f" (read back from the written files); quantized in {meta['quantize_seconds']:.1f}s")
    return 0


def cmd_eval(args) -> int:
    from quantbench import api

    row = api.evaluate(Path(args.artifact), args.reference, text=args.text, device=args.device, settings=_settings(args), tasks_file=args.tasks)
    if args.json:
        print(json.dumps(row, indent=2, default=str))
        return 0
    for key in ("method", "runtime", "device", "weight_bytes", "bits_per_weight", "reported_footprint_bytes", "peak_memory_bytes",
                "ppl", "reference_ppl", "delta_ppl", "kld_mean", "kld_median", "kld_p99", "top1_agreement", "prefill_tok_s",
                "decode_tok_s", "ttft_s", "task_acc"):
        if key in row:
            print(f"{key:26} {row[key]}")
    print(f"{'protocol':26} {json.dumps(row['protocol'])}")
    return 0


def cmd_compare(args) -> int:
    from quantbench import api
    from quantbench.report.tables import text_table, write_all

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if args.dry_run:
        return _dry_run(args, methods)
    result = api.compare(args.model, methods, text=args.text, out_dir=Path(args.out), device=args.device,
                         settings=_settings(args), tasks_file=args.tasks, memory_budget_bytes=args.memory_budget,
                         progress=_progress, context=args.context,
                         devices=[d.strip() for d in args.devices.split(",")] if args.devices else None)
    written = write_all(result, Path(args.out), Path(args.json) if args.json else None)
    print(text_table(result))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if any(r.get("status") == "ok" for r in result["rows"]) else 1


def cmd_generate(args) -> int:
    from quantbench import api

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
    p.add_argument("model", nargs="?", help="model folder, .gguf, hub id (default: built-in SmolLM2-135M)")
    p.add_argument("--method", required=True, help="a name from `quantbench methods`")
    p.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    _add_measure_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (bytes, bits/weight, memory) and stop")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="measure one artifact against the full-precision reference")
    p.add_argument("artifact", help="artifact folder, HF folder or .gguf file")
    p.add_argument("--reference", help="reference model (default: the artifact's source model)")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    _add_measure_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="every method, one table, a plot and a recommendation")
    p.add_argument("model", nargs="?", help="model folder, .gguf, hub id (default: built-in SmolLM2-135M)")
    p.add_argument("--methods", help="comma-separated names, or 'all' (default: 8 methods, under 3 minutes on 2 CPU cores)")
    p.add_argument("--out", default="quantbench-out", help="folder for artifacts, JSON, Markdown, CSV and the plot")
    p.add_argument("--json", help="also write the JSON result here")
    p.add_argument("--memory-budget", type=parse_bytes,
                   help="recommend the best method whose runtime memory (weights + KV cache at --context + llama.cpp's "
                   "buffers) fits, e.g. 1GB; with --methods ...,fit also builds quantbench fit's GGUF for it")
    p.add_argument("--context", type=int, default=4096, help="context the --memory-budget must hold (default 4096)")
    p.add_argument("--devices", help="GPUs to run methods on concurrently, one fresh process each, e.g. cuda:0,cuda:1 "
                                     "(default with --device cuda/auto: every visible GPU)")
    _add_measure_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (bytes, bits/weight, memory) and stop")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("generate", help="greedy completion with any artifact")
    p.add_argument("artifact", nargs="?", help="artifact folder, HF folder or .gguf (default: built-in model)")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    for module in EXTRA_COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

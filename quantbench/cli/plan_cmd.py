"""`quantbench plan [MODEL]`: exact memory of every method, from the config alone. Thin: parse, call, print."""

from __future__ import annotations

import json

from quantbench import api
from quantbench.cli.common import add_calibration_flags, add_model_argument, method_list, parse_bytes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="exact memory of every method for a model, from its config alone (no download)",
        description="Exact stored bytes, KV cache, total and the peak while quantizing, for every method, "
        "before downloading anything. MODEL: a preset (" + ", ".join(api.preset_names()) + "), a local folder "
        f"or config.json, a .gguf file, or a hub id (only config.json is fetched); default: the built-in {api.DEFAULT_MODEL}.",
    )
    add_model_argument(p)
    p.add_argument("--context", type=int, default=api.PLAN_CONTEXT, help=f"tokens of context to hold in the KV cache (default {api.PLAN_CONTEXT})")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--device-memory", type=parse_bytes, default=None,
                   help="memory to fit into, e.g. 24GB or 24GiB (default: free GPU memory if there is a GPU, else available RAM)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="the device the model will run on: its layout decides some bytes (default auto: cuda if present)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every method quantbench knows)")
    add_calibration_flags(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    result = api.plan(
        args.model,
        context=args.context,
        batch=args.batch,
        device_memory_bytes=args.device_memory,
        methods=method_list(args.methods),
        device=None if args.device == "auto" else args.device,
        calibration_samples=args.calibration_samples,
        calibration_length=args.calibration_length,
    )
    print(json.dumps(result, indent=2) if args.json else api.format_plan(result))
    return 0

"""`quantbench plan MODEL`: exact memory of every method, from the config alone. Thin: parse, call, print."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    from quantbench.cli.main import parse_bytes
    from quantbench.plan import DEFAULT_CALIBRATION_LENGTH, DEFAULT_CALIBRATION_SAMPLES, DEFAULT_CONTEXT
    from quantbench.presets import preset_names

    p = subparsers.add_parser(
        "plan",
        help="exact memory of every method for a model, from its config alone (no download)",
        description="Exact stored bytes, KV cache, total and the peak while quantizing, for every method, "
        "before downloading anything. MODEL: a preset (" + ", ".join(preset_names()) + "), a local folder "
        "or config.json, a .gguf file, or a hub id (only config.json is fetched).",
    )
    p.add_argument("model", metavar="MODEL", help="preset name, folder, config.json, .gguf or hub id")
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help=f"tokens of context to hold in the KV cache (default {DEFAULT_CONTEXT})")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--device-memory", type=parse_bytes, default=None,
                   help="memory to fit into, e.g. 24GB or 24GiB (default: free GPU memory if there is a GPU, else available RAM)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="the device the model will run on: its layout decides some bytes (default auto: cuda if present)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every method quantbench knows)")
    p.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                   help="calibration sequences assumed for layer-by-layer methods' quantize peak")
    p.add_argument("--calibration-length", type=int, default=DEFAULT_CALIBRATION_LENGTH,
                   help="tokens per calibration sequence assumed for the quantize peak")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from quantbench.plan import plan
    from quantbench.report.plan_table import format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    result = plan(
        args.model,
        context=args.context,
        batch=args.batch,
        device_memory_bytes=args.device_memory,
        methods=methods,
        device=None if args.device == "auto" else args.device,
        calibration_samples=args.calibration_samples,
        calibration_length=args.calibration_length,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0

"""`quantbench fit MODEL --budget 6GB -o OUT.gguf`: the best GGUF for a memory budget. Thin: parse, call, print."""

from __future__ import annotations

from quantbench import api
from quantbench.cli.common import Progress, add_calibration_flags, add_model_argument, parse_bytes


def add_parser(subparsers) -> None:
    defaults = api.SensitivitySettings()
    p = subparsers.add_parser(
        "fit",
        help="the best GGUF that fits a memory budget, chosen tensor by tensor from measured sensitivity",
        description="Chooses every tensor's llama.cpp type and the KV-cache type so that weights + KV cache at "
        "--context + llama.cpp's buffers fit --budget with the least predicted KL divergence, writes the GGUF "
        "through llama.cpp's quantizer, and the frontier (JSON + plot) beside it.",
    )
    add_model_argument(p)
    p.add_argument("--budget", type=parse_bytes, required=True, help="memory for llama.cpp to hold, e.g. 6GB, 6GiB, 120MB")
    p.add_argument("--context", type=int, default=api.PLAN_CONTEXT,
                   help=f"tokens of context the KV cache holds (default {api.PLAN_CONTEXT})")
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write (OUT.gguf)")
    p.add_argument("--text", help="text file to calibrate on (default: built-in Wikipedia excerpt)")
    p.add_argument("--device", default="auto", help="where the sensitivities are measured: cpu, cuda or auto")
    p.add_argument("--exclude-types", default="", help="comma-separated ggml types never to choose, e.g. Q4_1")
    p.add_argument("--kv-cache-types", default=",".join(api.KV_CACHE_TYPES),
                   help=f"KV-cache types to choose among (default {','.join(api.KV_CACHE_TYPES)})")
    add_calibration_flags(p)
    p.add_argument("--fisher-windows", type=int, default=defaults.fisher_sequences,
                   help=f"calibration windows for the Fisher diagonal (default {defaults.fisher_sequences})")
    p.add_argument("--direct-tensors", type=int, default=defaults.direct_tensors,
                   help=f"tensors measured directly to calibrate the estimate (default {defaults.direct_tensors})")
    p.set_defaults(func=run)


def _types(text: str) -> tuple[str, ...]:
    return tuple(x.strip().upper() for x in text.split(",") if x.strip())


def run(args) -> int:
    settings = api.Settings(calibration_samples=args.calibration_samples, calibration_length=args.calibration_length)
    sensitivity = api.SensitivitySettings(fisher_sequences=args.fisher_windows, direct_tensors=args.direct_tensors)
    report = api.fit(args.model, args.budget, args.output, context=args.context, text=args.text, device=args.device,
                     settings=settings, exclude_types=_types(args.exclude_types), kv_cache_types=_types(args.kv_cache_types),
                     sensitivity=sensitivity, progress=Progress())
    print(api.format_fit(report))
    return 0

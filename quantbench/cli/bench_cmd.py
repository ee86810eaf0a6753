"""`quantbench bench CONFIG_OR_PRESET`: speed and memory from a config alone, with random weights."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    from quantbench.bench import DEFAULT_METHODS
    from quantbench.presets import preset_names

    p = subparsers.add_parser(
        "bench",
        help="speed and memory of a model from its config alone, with random weights on the device (no download)",
        description="Builds the architecture from its config with random weights directly on the device, applies each "
        "method in place, and measures stored bytes, peak memory, prefill and decode tokens/s and the fraction of the "
        "memory-bandwidth ceiling reached. Quality is n/a (random weights). CONFIG_OR_PRESET: a preset ("
        + ", ".join(preset_names()) + "), a config.json or model folder, or a hub id.",
    )
    p.add_argument("model", metavar="CONFIG_OR_PRESET", help="preset name, config.json, folder or hub id")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for prefill (default 512)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded one at a time (default 64)")
    p.add_argument("--batch", type=int, default=1, help="sequences per forward (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default 3)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda if present)")
    p.add_argument("--runtime", default="auto", choices=("auto", "transformers", "quantbench", "llama.cpp"),
                   help="auto (default): quantbench's CUDA-graph runtime on CUDA, transformers on a CPU")
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    p.add_argument("--markdown", type=Path, help="write the result as a Markdown table here")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from quantbench.artifact import write_text_atomic
    from quantbench.bench import BenchSettings, run_bench
    from quantbench.report.bench_table import to_markdown, to_text

    settings = BenchSettings(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        batch=args.batch,
        repeats=args.repeats,
        device=None if args.device == "auto" else args.device,
        runtime=None if args.runtime == "auto" else args.runtime,
    )
    result = run_bench(args.model, settings, progress=lambda m: print(f"quantbench: {m}", file=sys.stderr, flush=True))
    for path, text in ((args.json, json.dumps(result, indent=2)), (args.markdown, to_markdown(result) + "\n")):
        if path:
            write_text_atomic(path, text)
    print(to_text(result))
    return 0

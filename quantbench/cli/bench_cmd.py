"""`quantbench bench [MODEL]`: speed and memory from a config alone, with random weights."""

from __future__ import annotations

import json
from pathlib import Path

from quantbench import api
from quantbench.cli.common import Progress, add_model_argument, method_list


def add_parser(subparsers) -> None:
    d = api.BenchSettings()
    p = subparsers.add_parser(
        "bench",
        help="speed and memory of a model from its config alone, with random weights on the device (no download)",
        description="Builds the architecture from its config with random weights directly on the device, applies each "
        "method in place, and measures stored bytes, peak memory, prefill and decode tokens/s and the fraction of the "
        "memory-bandwidth ceiling reached. Quality is n/a (random weights). MODEL: a preset ("
        + ", ".join(api.preset_names()) + f"), a config.json or model folder, or a hub id; default: the built-in {api.DEFAULT_MODEL}.",
    )
    add_model_argument(p)
    p.add_argument("--methods", default=",".join(d.methods), help=f"comma-separated (default {','.join(d.methods)})")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help=f"prompt length for prefill (default {d.prompt_tokens})")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, help=f"tokens decoded one at a time (default {d.new_tokens})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"sequences per forward (default {d.batch})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed repeats, median reported (default {d.repeats})")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda if present)")
    p.add_argument("--runtime", default="auto", choices=("auto", "transformers", "quantbench", "llama.cpp"),
                   help="auto (default): quantbench's CUDA-graph runtime on CUDA, transformers on a CPU")
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    p.add_argument("--markdown", type=Path, help="write the result as a Markdown table here")
    p.set_defaults(func=run)


def run(args) -> int:
    settings = api.BenchSettings(
        methods=tuple(method_list(args.methods) or ()),
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        batch=args.batch,
        repeats=args.repeats,
        device=None if args.device == "auto" else args.device,
        runtime=None if args.runtime == "auto" else args.runtime,
    )
    result = api.bench(args.model, settings, progress=Progress())
    for path, text in ((args.json, json.dumps(result, indent=2)), (args.markdown, api.format_bench(result, markdown=True) + "\n")):
        if path:
            api.write_text_atomic(path, text)
    print(api.format_bench(result))
    return 0

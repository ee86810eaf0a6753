"""`quantbench fit MODEL --budget 6GB -o OUT.gguf`: the best GGUF for a memory budget. Thin: parse, call, print."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    from quantbench.cli.main import parse_bytes
    from quantbench.fit.budget import KV_CACHE_TYPES
    from quantbench.fit.sensitivity import SensitivitySettings

    defaults = SensitivitySettings()
    p = subparsers.add_parser(
        "fit",
        help="the best GGUF that fits a memory budget, chosen tensor by tensor from measured sensitivity",
        description="Chooses every tensor's llama.cpp type and the KV-cache type so that weights + KV cache at "
        "--context + llama.cpp's buffers fit --budget with the least predicted KL divergence, writes the GGUF "
        "through llama.cpp's quantizer, and the frontier (JSON + plot) beside it.",
    )
    p.add_argument("model", nargs="?", help="model folder, .gguf, hub id (default: built-in SmolLM2-135M)")
    p.add_argument("--budget", type=parse_bytes, required=True, help="memory for llama.cpp to hold, e.g. 6GB, 6GiB, 120MB")
    p.add_argument("--context", type=int, default=4096, help="tokens of context the KV cache holds (default 4096)")
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write (OUT.gguf)")
    p.add_argument("--text", help="text file to calibrate on (default: built-in Wikipedia excerpt)")
    p.add_argument("--device", default="auto", help="where the sensitivities are measured: cpu, cuda or auto")
    p.add_argument("--exclude-types", default="", help="comma-separated ggml types never to choose, e.g. Q4_1")
    p.add_argument("--kv-cache-types", default=",".join(KV_CACHE_TYPES),
                   help=f"KV-cache types to choose among (default {','.join(KV_CACHE_TYPES)})")
    p.add_argument("--calibration-samples", type=int, default=32, help="calibration sequences (imatrix, sensitivity)")
    p.add_argument("--calibration-length", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument("--fisher-windows", type=int, default=defaults.fisher_sequences,
                   help=f"calibration windows for the Fisher diagonal (default {defaults.fisher_sequences})")
    p.add_argument("--direct-tensors", type=int, default=defaults.direct_tensors,
                   help=f"tensors measured directly to calibrate the estimate (default {defaults.direct_tensors})")
    p.set_defaults(func=run)


def run(args) -> int:
    from quantbench import api
    from quantbench.api import Settings
    from quantbench.cli.main import _progress
    from quantbench.fit.sensitivity import SensitivitySettings

    split = lambda s: tuple(x.strip().upper() for x in s.split(",") if x.strip())  # noqa: E731
    settings = Settings(calibration_samples=args.calibration_samples, calibration_length=args.calibration_length)
    sensitivity = SensitivitySettings(fisher_sequences=args.fisher_windows, direct_tensors=args.direct_tensors)
    report = api.fit(args.model, args.budget, args.output, context=args.context, text=args.text, device=args.device,
                     settings=settings, exclude_types=split(args.exclude_types), kv_cache_types=split(args.kv_cache_types),
                     sensitivity=sensitivity, progress=_progress)
    m = report["memory"]
    s = report["sensitivity"]
    print(f"wrote {report['artifact']}: {report['weights_bytes'] / 1e6:.2f} MB of tensors, "
          f"{report['bits_per_weight']:.3f} bits/weight (types and bytes checked against the plan)")
    print(f"memory in llama.cpp at --context {report['context']} (budget {report['budget_bytes'] / 1e6:.2f} MB):")
    from quantbench.fit.budget import MemoryBreakdown, RuntimeSetting

    setting = RuntimeSetting(**m["setting"])
    for line in MemoryBreakdown(m["weights"], m["kv_cache"], m["buffers"], setting, m["buffers_source"]).lines():
        print("  " + line)
    print("tensor types: " + ", ".join(f"{t} x{n}" for t, n in sorted(report["tensor_types"].items())))
    print(f"predicted mean KLD {report['predicted_kld']:.5f} (estimate vs direct rank correlation "
          f"{s['spearman']:.2f} over {len(s['direct'])} direct measurements)")
    print(f"run it with: llama-cli -m {report['artifact']} {report['llama_cpp_flags']}")
    print(f"frontier: {report['artifact'].removesuffix('.gguf')}.frontier.json / .frontier.png", file=sys.stdout)
    return 0

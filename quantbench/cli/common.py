"""What several subcommands share: flags (their defaults come from the API's Settings, defined once)
and the progress display."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from quantbench import api

MODEL_HELP = f"a preset, model folder, config.json, .gguf file or hub id (default: the built-in {api.DEFAULT_MODEL})"


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


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL", help=MODEL_HELP)


def add_calibration_flags(p: argparse.ArgumentParser) -> None:
    d = api.DEFAULTS
    p.add_argument("--calibration-samples", type=int, default=d.calibration_samples,
                   help=f"calibration sequences (GPTQ, AWQ, imatrix; default {d.calibration_samples})")
    p.add_argument("--calibration-length", type=int, default=d.calibration_length,
                   help=f"tokens per calibration sequence (default {d.calibration_length})")


def add_measure_flags(p: argparse.ArgumentParser) -> None:
    d = api.DEFAULTS
    p.add_argument("--text", help="text file to calibrate and score on (default: built-in Wikipedia excerpt)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)")
    p.add_argument("--window", type=int, default=d.protocol.window, help=f"perplexity window in tokens (default {d.protocol.window})")
    p.add_argument("--windows", type=int, default=d.protocol.max_windows,
                   help=f"how many evaluation windows to score (default {d.protocol.max_windows})")
    p.add_argument("--score-from", type=int, default=d.protocol.score_from,
                   help="score only positions >= this in each window (llama.cpp: window/2)")
    bos = p.add_mutually_exclusive_group()
    bos.add_argument("--add-bos", dest="add_bos", action="store_const", const=True, default=None,
                     help="prepend BOS to every window (default: exactly when the model's tokenizer adds BOS)")
    bos.add_argument("--no-add-bos", dest="add_bos", action="store_const", const=False,
                     help="never prepend BOS (default: exactly when the model's tokenizer adds BOS)")
    add_calibration_flags(p)
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help=f"prompt length for prefill speed (default {d.prompt_tokens})")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, help=f"tokens decoded for decode speed (default {d.new_tokens})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size for speed (default {d.batch})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed repeats, median reported (default {d.repeats})")
    p.add_argument("--no-speed", action="store_true", help="skip speed measurement")
    p.add_argument("--tasks", type=Path, help="JSONL of multiple-choice items {context, choices, answer}")
    p.add_argument("--runtime", default="auto",
                   help="runtime that measures each artifact: auto (default: quantbench's CUDA-graph runtime on CUDA for "
                   "every family it runs, llama.cpp for GGUF, transformers on a CPU) or a runtime's name "
                   "(quantbench/runtimes/; an unknown name's error lists them)")
    p.add_argument("--max-memory", type=parse_max_memory, help="cap per device for the full-precision reference, e.g. "
                   "cuda:0=10GB,cuda:1=40GB,cpu=200GB: the model is split across the GPUs and the rest streamed from the CPU "
                   "(accelerate's max_memory); for models larger than one GPU")


def settings_from(args) -> "api.Settings":
    protocol = api.PerplexityProtocol(window=args.window, max_windows=args.windows, score_from=args.score_from)
    return api.Settings(protocol=protocol, add_bos=args.add_bos, calibration_samples=args.calibration_samples,
                        calibration_length=args.calibration_length, prompt_tokens=args.prompt_tokens,
                        new_tokens=args.new_tokens, batch=args.batch, repeats=args.repeats, measure_speed=not args.no_speed,
                        runtime=None if args.runtime == "auto" else args.runtime, max_memory=args.max_memory)


def method_list(text: str | None) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


class Progress:
    """Messages on stderr, and compare's methods as a progress bar with rate and ETA (tqdm)."""

    def __init__(self):
        self.bar = None

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        from tqdm import tqdm

        if total is None:
            tqdm.write(f"quantbench: {message}", file=sys.stderr)
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="method", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{n}/{total} methods |{bar}| {elapsed} elapsed, ETA {remaining}, {rate_fmt} {postfix}")
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(message if done < total else "")
        if done >= total:
            self.bar.close()

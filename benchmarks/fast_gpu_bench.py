"""GPU record for issue 10: the quantbench runtime on every family, beside transformers and the gpt-fast anchor.

Run on the GPU machine (after benchmarks/device_setup.sh has installed the carried packages):

    python3 benchmarks/fast_gpu_bench.py --out $OUT/fast.json [--methods ...] [--batches 1,8,32]
        [--transformers bf16,bnb-nf4] [--anchor .devcarry/gptfast_anchor.py]

Writes one JSON record (device, versions, date, bandwidth, rows) and prints a Markdown table.
Llama-3.1-8B shape (quantbench's preset), random weights, prompt 512, 128 new tokens by default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_METHODS = "bf16,rtn-w4g128,gptq-w4g128,awq-w4g128,rtn-w8g128,rtn-w3g128,rtn-w2g128,bnb-nf4,bnb-nf4-dq,bnb-fp4,bnb-int8"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Llama-3.1-8B")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transformers", default="bf16,bnb-nf4", help="methods also run through the transformers runtime (batch 1)")
    ap.add_argument("--anchor", default="", help="path of gptfast_anchor.py to run beside (bf16,int4)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from quantbench.artifact import versions
    from quantbench.bench import BenchSettings, measure_bandwidth, run_bench
    from quantbench.device import describe_device
    from quantbench.fast_bench import fast_rows, fresh_triton_cache
    from quantbench.plan import load_model_config
    from quantbench.recipes import get_recipe

    device = "cuda"
    model = load_model_config(args.model)
    bandwidth = measure_bandwidth(device)
    print(f"bandwidth {bandwidth['bytes_per_s'] / 1e9:.0f} GB/s", flush=True)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config["vocab_size"], (args.prompt_tokens,), generator=generator).tolist()
    batches = tuple(int(b) for b in args.batches.split(","))
    record = {
        "kind": "synthetic bench (random weights), issue 10 GPU record",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model.name,
        "device": describe_device(device),
        "versions": {**versions(), "triton": _version("triton")},
        "settings": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "batches": batches, "repeats": args.repeats},
        "bandwidth": bandwidth,
        "rows": [],
        "rerun": "python3 benchmarks/fast_gpu_bench.py " + " ".join(sys.argv[1:]),
    }

    def save():
        Path(args.out).write_text(json.dumps(record, indent=2, default=str))

    with fresh_triton_cache():
        for name in args.methods.split(","):
            try:
                rows = fast_rows(model.config, get_recipe(name), device, bandwidth["bytes_per_s"], prompt, args.new_tokens,
                                 batches, args.repeats, warmup=1, progress=lambda m: print(m, flush=True))
            except Exception as exc:  # keep the other methods; the row says what failed
                logging.exception("%s failed", name)
                rows = [{"method": name, "runtime": "quantbench", "status": f"error: {exc!r}"[:400]}]
            record["rows"].extend(rows)
            for r in rows:
                print(json.dumps({k: r.get(k) for k in ("method", "batch", "status", "decode_tok_s", "fraction_of_ceiling",
                                                        "cold_ttft_s", "warm_ttft_s", "peak_bytes", "memory_rule_ok", "kernels")}), flush=True)
            save()

    for name in filter(None, args.transformers.split(",")):
        t0 = time.perf_counter()
        try:
            result = run_bench(args.model, BenchSettings(methods=(name,), prompt_tokens=args.prompt_tokens,
                                                         new_tokens=args.new_tokens, batch=1, repeats=args.repeats, device=device,
                                                         runtime="transformers"))
            for r in result["methods"]:
                record["rows"].append({**r, "runtime": "transformers", "batch": 1, "status": "ok",
                                       "kernels": {"all linears": "transformers eager forward (" + result["settings"]["runtime"] + ")"}})
                print(json.dumps({"method": name, "runtime": "transformers", "decode_tok_s": r["decode_tok_s"],
                                  "fraction_of_ceiling": r["fraction_of_ceiling"]}), flush=True)
        except Exception as exc:
            logging.exception("transformers %s failed", name)
            record["rows"].append({"method": name, "runtime": "transformers", "status": f"error: {exc!r}"[:400]})
        print(f"transformers {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        save()

    if args.anchor:
        torch.cuda.empty_cache()
        proc = subprocess.run([sys.executable, args.anchor, "bf16,int4", str(args.new_tokens)], capture_output=True, text=True, timeout=400)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        record["anchor"] = {"script": "shared/anchors/gptfast_anchor.py (gpt-fast recipe, torch.compile reduce-overhead)",
                            "results": lines, "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}
        print(json.dumps(lines), flush=True)
        save()
    print(to_markdown(record))
    return 0


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def to_markdown(record: dict) -> str:
    gb = lambda n: f"{n / 1e9:.2f} GB" if isinstance(n, (int, float)) else "-"  # noqa: E731
    lines = [
        f"{record['model']} (random weights) on {record['device']}, {record['date']}; bandwidth "
        f"{record['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s (copy, read + write); prompt {record['settings']['prompt_tokens']}, "
        f"{record['settings']['new_tokens']} new tokens; versions {json.dumps(record['versions'])}",
        "",
        "| method | runtime | batch | stored | decode tok/s | bytes/step | of roofline | prefill tok/s | TTFT cold / warm s | peak (rule) | kernel (linears) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {r['runtime']} | {r.get('batch', '-')} | | {r.get('status')} | | | | | | |")
            continue
        kernel = r.get("kernels", {}).get("mlp down") or next(iter(r.get("kernels", {}).values()), "")
        rule = "" if "memory_rule_ok" not in r else (" ok" if r["memory_rule_ok"] else " OVER")
        cold = r.get("cold_ttft_s")
        ttft = f"{cold:.2f} / {r.get('warm_ttft_s', r.get('ttft_s', 0)):.3f}" if cold is not None else f"- / {r.get('ttft_s', 0):.3f}"
        peak = r.get("peak_bytes", r.get("inference_peak_bytes"))
        lines.append(
            f"| {r['method']} | {r['runtime']} | {r['batch']} | {gb(r['stored_bytes'])} | {r['decode_tok_s']:.1f} "
            f"| {gb(r['bytes_read_per_decode_step'])} | {100 * r['fraction_of_ceiling']:.1f}% | {r['prefill_tok_s']:,.0f} "
            f"| {ttft} | {gb(peak)}{rule} | {kernel} |"
        )
    for a in record.get("anchor", {}).get("results", []):
        if "variant" in a:
            lines.append(f"| anchor {a['variant']} | gpt-fast (torch.compile) | 1 | {gb(a.get('weight_bytes'))} | {a.get('decode_tok_s')} "
                         f"| {gb(a.get('bytes_per_token'))} | {100 * a.get('fraction_of_copy_bw', 0):.1f}% (own bw) | | "
                         f"{a.get('compile_and_first_tokens_s')} / - | | {a.get('error', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

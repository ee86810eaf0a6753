"""Microbenchmark of quantbench.kernels on a CUDA GPU: achieved bandwidth of each fast kernel at
Llama-3.1-8B linear shapes, against the reference path, tinygemm and cuBLAS bf16, plus correctness
checks of every kernel against its reference on the same device.

    PYTHONPATH=. python3 benchmarks/kernels_bench.py OUT.json          # measure (CUDA)
    python3 benchmarks/kernels_bench.py --markdown OUT.json            # the tables for RESULTS.md

Bandwidth = bytes one call reads (the weight as stored, plus x) and writes (y), over its time. Each
timed call reads a different copy of the weight (copies rotate through > 512 MiB, several times the
L2 cache), and the calls are replayed from one CUDA graph, so neither the L2 nor Python launch
overhead flatters the kernel. Copy bandwidth (device-to-device copy_, bytes read + written) is
measured in the same run; fractions are of that.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

from quantbench.bench import measure_bandwidth
from quantbench.kernels import Bnb4bitWeight, BnbInt8Weight, IntGroupWeight, reference, tinygemm, triton_bnb, triton_int, triton_int8
from quantbench.kernels.weights import words_per_row

SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096)]  # (rows, cols): q/o proj; gate/up; down
BATCHES = (1, 8, 32)
ROTATE_BYTES = 512 * 2**20
GEMV_CONFIGS = [
    triton_int.GemvConfig(block_n=16, split_k=4, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=4, num_warps=4),
    triton_int.GemvConfig(block_n=64, split_k=4, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=8, num_warps=4),
    triton_int.GemvConfig(block_n=64, split_k=8, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=1, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=4, num_warps=2),
]
GEMM_CONFIGS = [  # batch 8 and 32; the first two also at batch 1 (the tensor-core kernel there)
    triton_int.GemmConfig(block_m=16, block_n=64, split_k=4, num_warps=4),
    triton_int.GemmConfig(block_m=16, block_n=32, split_k=8, num_warps=4),
    triton_int.GemmConfig(block_m=16, block_n=64, split_k=1, num_warps=4),
    triton_int.GemmConfig(block_m=16, block_n=128, split_k=4, num_warps=8),
    triton_int.GemmConfig(block_m=32, block_n=64, split_k=4, num_warps=4),
]
INT8_BLOCK_N = (32, 64, 128)
BNB_GEMV_CONFIGS = [triton_bnb.GemvConfig(), triton_bnb.GemvConfig(block_n=64, block_words=16, split_k=4)]
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
       -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]  # REFERENCE.md section 1


def random_int_weight(rows: int, cols: int, bits: int, group_size: int, seed: int) -> IntGroupWeight:
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = cols // group_size
    words = words_per_row(cols, bits)
    packed = torch.randint(-(2**31), 2**31 - 1, (rows, words), generator=g, device="cuda", dtype=torch.int32)
    zero = torch.randint(-(2**31), 2**31 - 1, (words_per_row(rows, bits), groups), generator=g, device="cuda", dtype=torch.int32)
    scale = (torch.rand(rows, groups, generator=g, device="cuda") * 0.02 + 0.001).to(torch.bfloat16)
    return IntGroupWeight(packed, scale, zero, rows, cols, bits, group_size)


def random_bnb_weight(rows: int, cols: int, double_quant: bool, seed: int) -> Bnb4bitWeight:
    g = torch.Generator(device="cuda").manual_seed(seed)
    n, blocks = rows * cols, rows * cols // 64
    packed = torch.randint(0, 256, (n // 2, 1), generator=g, device="cuda", dtype=torch.uint8)
    code = torch.tensor(NF4, device="cuda")
    if not double_quant:
        return Bnb4bitWeight(packed, torch.rand(blocks, generator=g, device="cuda") * 0.1, code, rows, cols, "nf4")
    absmax = torch.randint(0, 256, (blocks,), generator=g, device="cuda", dtype=torch.uint8)
    nested_code = torch.sort(torch.rand(256, generator=g, device="cuda") * 2 - 1).values
    nested_absmax = torch.rand(-(-blocks // 256), generator=g, device="cuda") * 0.1
    offset = torch.tensor(0.05, device="cuda")
    return Bnb4bitWeight(packed, absmax, code, rows, cols, "nf4", nested_absmax=nested_absmax, nested_code=nested_code, nested_offset=offset)


def random_int8_weight(rows: int, cols: int, seed: int) -> BnbInt8Weight:
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = torch.randint(-127, 128, (rows, cols), generator=g, device="cuda", dtype=torch.int8)
    return BnbInt8Weight(weight, torch.rand(rows, generator=g, device="cuda") * 0.1 + 0.01, 6.0)


def graph_time(calls: list, replays: int = 5, samples: int = 5) -> tuple[float, float]:
    """(median, min) seconds per call, calls replayed from one CUDA graph."""
    calls[0]()  # compile outside capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(samples):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        per_call.append(a.elapsed_time(b) / 1e3 / (replays * len(calls)))
    del graph
    return statistics.median(per_call), min(per_call)


def event_time(call, repeats: int = 3) -> float:
    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        call()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def copies_for(nbytes: int) -> int:
    return max(2, -(-ROTATE_BYTES // nbytes))


class Recorder:
    def __init__(self, path: Path, meta: dict):
        self.path, self.data = path, {**meta, "rows": [], "checks": []}

    def add(self, kind: str, row: dict) -> None:
        self.data[kind].append(row)
        print(json.dumps(row), flush=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def bench_row(rec, copy_bw, kernel, config, bits, rows, cols, batch, seconds, best, weight_bytes):
    moved = weight_bytes + batch * cols * 2 + batch * rows * 2
    rec.add("rows", {
        "kernel": kernel, "config": config, "bits": bits, "rows": rows, "cols": cols, "batch": batch,
        "us": seconds * 1e6, "us_min": best * 1e6, "bytes": moved, "GBps": moved / seconds / 1e9,
        "of_copy_bandwidth": moved / seconds / copy_bw,
    })  # fmt: skip


def checks(rec: Recorder, copy_bw=None, started=None) -> None:
    """Each fast kernel against its reference on this device (bit-exact dequantize; matmul error)."""
    for bits in (2, 3, 4, 8):
        w = random_int_weight(1000, 1024, bits, 128, seed=bits)
        for dtype in (torch.float32, torch.bfloat16):
            exact = torch.equal(triton_int.dequantize(w, dtype), reference.dequantize_int_group(w, dtype))
            rec.add("checks", {"check": "triton-int dequantize bit-exact", "bits": bits, "dtype": str(dtype), "ok": exact})
        W = reference.dequantize_int_group(w).double()
        for batch in (1, 3, 32):
            x = torch.randn(batch, 1024, device="cuda", dtype=torch.bfloat16)
            exact = x.double() @ W.T
            magnitude = x.double().abs() @ W.abs().T
            y = triton_int.matmul(x, w)
            err = ((y.double() - exact).abs() / magnitude).max().item()
            rec.add("checks", {"check": "triton-int matmul max |err| / (|x| @ |W|.T)", "bits": bits, "batch": batch, "value": err, "ok": err < 2**-7})
    for dq in (False, True):
        w = random_bnb_weight(1000, 1024, dq, seed=3)
        for dtype in (torch.float32, torch.bfloat16):
            exact = torch.equal(triton_bnb.dequantize(w, dtype), reference.dequantize_bnb_4bit(w, dtype))
            rec.add("checks", {"check": "triton-bnb dequantize bit-exact", "double_quant": dq, "dtype": str(dtype), "ok": exact})
        W = reference.dequantize_bnb_4bit(w).double()
        for batch in (1, 3, 32):
            x = torch.randn(batch, 1024, device="cuda", dtype=torch.bfloat16)
            err = ((triton_bnb.matmul(x, w).double() - x.double() @ W.T).abs() / (x.double().abs() @ W.abs().T)).max().item()
            rec.add("checks", {"check": "triton-bnb matmul max |err| / (|x| @ |W|.T)", "double_quant": dq, "batch": batch, "value": err, "ok": err < 2**-7})
    w8 = random_int8_weight(1000, 1024, seed=5)
    for batch in (1, 3, 32):
        x = torch.randn(batch, 1024, device="cuda", dtype=torch.bfloat16)
        x[:, 10] = 20.0  # an outlier column
        ref = reference.matmul_bnb_int8(x, w8)
        magnitude = x.double().abs() @ reference.dequantize_bnb_int8(w8).double().abs().T
        err = ((triton_int8.matmul(x, w8).double() - ref.double()).abs() / magnitude).max().item()
        rec.add("checks", {"check": "triton-llm-int8 vs reference max |err| / (|x| @ |W|.T)", "batch": batch, "value": err, "ok": err < 2**-7})
    w = random_int_weight(1024, 4096, 4, 128, seed=7)
    W = reference.dequantize_int_group(w).double()
    for high_first in (True, False):
        tg = tinygemm.repack(w) if high_first else _repack_low_first(w)
        x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
        err = ((tinygemm.matmul(x, tg).double() - x.double() @ W.T).abs() / (x.double().abs() @ W.abs().T)).max().item()
        rec.add("checks", {"check": "tinygemm matmul max |err| / (|x| @ |W|.T)", "even column in high nibble": high_first, "value": err,
                           "resident/stored bytes": tg.resident_bytes() / w.stored_bytes()})  # fmt: skip


def _repack_low_first(w):
    """The other nibble order, to check which one tinygemm means (the check above says)."""
    q = reference.unpack_codes(w.packed, 4, w.cols)
    nibbles = ((q[:, 1::2] << 4) | q[:, 0::2]).to(torch.uint8)
    good = tinygemm.repack(w)
    return tinygemm.TinygemmInt4Weight(torch.ops.aten._convert_weight_to_int4pack(nibbles, 8), good.scales_and_zeros, w.rows, w.cols, w.group_size)


def recheck_bnb_and_int8(rec, copy_bw, started):
    """The nf4 and LLM.int8 kernels only, default configurations, batch 1 and 8, the 14336-wide shapes:
    a short re-measure after a kernel change."""
    for rows, cols in SHAPES[:2]:
        for dq in (False, True):
            base = random_bnb_weight(rows, cols, dq, seed=0)
            weights = [base] + [random_bnb_weight(rows, cols, dq, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
            for batch in (1, 8):
                x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
                med, best = graph_time([lambda w=w: triton_bnb.matmul(x, w) for w in weights])
                bench_row(rec, copy_bw, "triton-bnb-nf4" + ("-dq" if dq else ""), {"default": True}, 4, rows, cols, batch, med, best, base.stored_bytes())
            del weights
        base = random_int8_weight(rows, cols, seed=0)
        weights = [base] + [random_int8_weight(rows, cols, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
        for batch in (1, 8):
            x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
            med, best = graph_time([lambda w=w: triton_int8.matmul(x, w) for w in weights])
            bench_row(rec, copy_bw, "triton-llm-int8", {"default": True}, 8, rows, cols, batch, med, best, base.stored_bytes())
        del weights
        torch.cuda.empty_cache()


SECTIONS = ("checks", "int4_sweep", "bnb_and_int8", "other_bits", "recheck_bnb_and_int8")


def main(out: Path, sections: list[str]) -> None:
    started = time.time()
    copy_bw = measure_bandwidth("cuda")["bytes_per_s"]  # 2 GiB copy_, median of 10, read + written
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "copy_bandwidth_Bps": copy_bw,
        "method": "bytes read + written per call / median time per call; calls replayed from one CUDA graph, each on its own "
        f"copy of the weight (copies rotate through >= {ROTATE_BYTES >> 20} MiB); copy bandwidth = device-to-device copy_, read + written",
    }  # fmt: skip
    rec = Recorder(out, meta)
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)
    for section in [globals()[name] for name in sections]:
        try:
            section(rec, copy_bw, started)
        except Exception as e:  # one broken section is reported, the others still run
            rec.add("checks", {"check": f"section {section.__name__} failed", "error": repr(e)[:500], "ok": False})
        torch.cuda.empty_cache()
    rec.add("checks", {"check": "wall seconds", "value": time.time() - started})


def int4_sweep(rec, copy_bw, started):

    for rows, cols in SHAPES:
        base = random_int_weight(rows, cols, 4, 128, seed=0)
        n = copies_for(base.stored_bytes())
        weights = [base] + [random_int_weight(rows, cols, 4, 128, seed=i) for i in range(1, n)]
        tg = [tinygemm.repack(w) for w in weights]
        for batch in BATCHES:
            x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
            if batch == 1:
                configs = [("gemv", c) for c in GEMV_CONFIGS] + [("gemm", c) for c in GEMM_CONFIGS[:2]]
            else:
                configs = [("gemm", c) for c in GEMM_CONFIGS if c.block_m <= max(16, batch)]
            for key, cfg in configs:
                calls = [lambda w=w: triton_int.matmul(x, w, **{key: cfg}) for w in weights]
                try:
                    med, best = graph_time(calls)
                    bench_row(rec, copy_bw, f"triton-int-{key}", cfg.__dict__, 4, rows, cols, batch, med, best, base.stored_bytes())
                except Exception as e:  # a config that fails to compile is reported, not fatal
                    rec.add("rows", {"kernel": "triton-int", "config": cfg.__dict__, "rows": rows, "cols": cols, "batch": batch, "error": repr(e)[:300]})
            med, best = graph_time([lambda t=t: tinygemm.matmul(x, t) for t in tg])
            bench_row(rec, copy_bw, "tinygemm", {"inner_k_tiles": 8}, 4, rows, cols, batch, med, best, tg[0].resident_bytes())
            dense = [torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(rows * cols * 2))]
            med, best = graph_time([lambda d=d: torch.nn.functional.linear(x, d) for d in dense])
            bench_row(rec, copy_bw, "cublas-bf16", {}, 16, rows, cols, batch, med, best, rows * cols * 2)
            del dense
            if batch == 1:
                t = event_time(lambda: reference.matmul_int_group(x, base))
                bench_row(rec, copy_bw, "reference-int", {}, 4, rows, cols, batch, t, t, base.stored_bytes())
        del weights, tg
        torch.cuda.empty_cache()
        print(f"{rows}x{cols} done at {time.time() - started:.0f} s", flush=True)


def bnb_and_int8(rec, copy_bw, started):
    for rows, cols in SHAPES:
        for dq in (False, True):
            base = random_bnb_weight(rows, cols, dq, seed=0)
            weights = [base] + [random_bnb_weight(rows, cols, dq, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
            for batch in BATCHES:
                x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
                for cfg in BNB_GEMV_CONFIGS if batch == 1 else [triton_bnb.GemmConfig()]:
                    key = "gemv" if batch == 1 else "gemm"
                    med, best = graph_time([lambda w=w: triton_bnb.matmul(x, w, **{key: cfg}) for w in weights])
                    bench_row(rec, copy_bw, "triton-bnb-nf4" + ("-dq" if dq else ""), cfg.__dict__, 4, rows, cols, batch, med, best, base.stored_bytes())
            del weights
        base = random_int8_weight(rows, cols, seed=0)
        weights = [base] + [random_int8_weight(rows, cols, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
        for batch in BATCHES:
            for outliers in (False, True):
                x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
                if outliers:
                    x[:, 100] = 20.0  # one outlier column: its tile takes the 16-bit path too
                for block_n in INT8_BLOCK_N if not outliers else (64,):
                    med, best = graph_time([lambda w=w: triton_int8.matmul(x, w, block_n=block_n) for w in weights])
                    bench_row(rec, copy_bw, "triton-llm-int8" + ("-1-outlier-col" if outliers else ""), {"block_n": block_n}, 8, rows, cols, batch, med, best, base.stored_bytes())
        del weights
        torch.cuda.empty_cache()
        print(f"bnb {rows}x{cols} done at {time.time() - started:.0f} s", flush=True)


def other_bits(rec, copy_bw, started):
    """Other bit widths at batch 1 (default config), 14336-wide shapes."""
    for bits in (8, 3, 2):
        for rows, cols in SHAPES[1:]:
            base = random_int_weight(rows, cols, bits, 128, seed=0)
            weights = [base] + [random_int_weight(rows, cols, bits, 128, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
            x = torch.randn(1, cols, device="cuda", dtype=torch.bfloat16)
            for cfg in (triton_int.GemvConfig(block_n=32, split_k=4),):
                med, best = graph_time([lambda w=w: triton_int.matmul(x, w, gemv=cfg) for w in weights])
                bench_row(rec, copy_bw, "triton-int", cfg.__dict__, bits, rows, cols, 1, med, best, base.stored_bytes())
            del weights


def to_markdown(data: dict) -> str:
    """Best configuration per (kernel, shape, batch): time, GB/s and fraction of copy bandwidth."""
    best: dict = {}
    for r in data["rows"]:
        if "error" in r:
            continue
        key = (r["kernel"], r["bits"], r["rows"], r["cols"], r["batch"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    shapes = sorted({(k[2], k[3]) for k in best}, key=lambda rc: (-rc[0] * rc[1], rc))
    lines = [
        f"{data['device']}, torch {data['torch']}, triton {data['triton']}, {data['date']}; copy bandwidth "
        f"{data['copy_bandwidth_Bps'] / 1e9:.0f} GB/s (read + written). Each cell: median us per call, and the bytes "
        "it moves (weight as stored + x + y) per second as a % of copy bandwidth; best configuration of those tried "
        "(all are in the JSON).",
        "",
        "| kernel | bits | " + " | ".join(f"{r}x{c} b{b}" for r, c in shapes for b in BATCHES) + " |",
        "|---|---|" + "---|" * (len(shapes) * len(BATCHES)),
    ]
    kernels = sorted({(k[0], k[1]) for k in best}, key=lambda kb: (-kb[1], kb[0]))
    for kernel, bits in kernels:
        cells = []
        for r, c in shapes:
            for b in BATCHES:
                row = best.get((kernel, bits, r, c, b))
                cells.append(f"{row['us']:.1f} us, {100 * row['of_copy_bandwidth']:.0f}%" if row else "")
        lines.append(f"| {kernel} | {bits} | " + " | ".join(cells) + " |")
    checks = [c for c in data["checks"] if "ok" in c]
    failed = [c for c in checks if not c["ok"]]
    lines += ["", f"Correctness on the same device: {len(checks) - len(failed)} of {len(checks)} checks passed"
              + (f"; FAILED: {failed}" if failed else " (every dequantization bit-exact; every matmul within 2^-7 of sum |x||W|).")]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        print(to_markdown(json.loads(Path(sys.argv[2]).read_text())))
    else:  # OUT.json [section ...]; all four measuring sections by default
        names = sys.argv[2:] or ["checks", "int4_sweep", "bnb_and_int8", "other_bits"]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            sys.exit(f"unknown sections {unknown}; choose from {sorted(SECTIONS)}")
        main(Path(sys.argv[1]), names)

"""Microbenchmark of quantbench.kernels on a CUDA GPU: achieved bandwidth of each fast kernel at
Llama-3.1-8B linear shapes, against the reference path, tinygemm and cuBLAS bf16, plus correctness
checks of every kernel against its reference on the same device.

    PYTHONPATH=. python3 benchmarks/kernels_bench.py OUT.json

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

from quantbench.kernels import IntGroupWeight, reference, tinygemm, triton_int
from quantbench.kernels.weights import words_per_row

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (rows, cols): q/o proj; gate/up; down
BATCHES = (1, 8, 32)
ROTATE_BYTES = 512 * 2**20
GEMV_CONFIGS = [
    triton_int.GemvConfig(block_n=16, split_k=1, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=1, num_warps=4),
    triton_int.GemvConfig(block_n=64, split_k=1, num_warps=4),
    triton_int.GemvConfig(block_n=32, split_k=4, num_warps=4),
    triton_int.GemvConfig(block_n=64, split_k=4, num_warps=4),
    triton_int.GemvConfig(block_n=64, split_k=2, num_warps=8),
    triton_int.GemvConfig(block_n=128, split_k=4, num_warps=8),
]
GEMM_CONFIGS = [
    triton_int.GemmConfig(block_m=16, block_n=32, block_units=16, split_k=1, num_warps=4),
    triton_int.GemmConfig(block_m=16, block_n=64, block_units=16, split_k=1, num_warps=4),
    triton_int.GemmConfig(block_m=16, block_n=64, block_units=16, split_k=4, num_warps=4),
    triton_int.GemmConfig(block_m=32, block_n=128, block_units=32, split_k=2, num_warps=8),
]


def random_int_weight(rows: int, cols: int, bits: int, group_size: int, seed: int) -> IntGroupWeight:
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = cols // group_size
    words = words_per_row(cols, bits)
    packed = torch.randint(-(2**31), 2**31 - 1, (rows, words), generator=g, device="cuda", dtype=torch.int32)
    zero = torch.randint(-(2**31), 2**31 - 1, (words_per_row(rows, bits), groups), generator=g, device="cuda", dtype=torch.int32)
    scale = (torch.rand(rows, groups, generator=g, device="cuda") * 0.02 + 0.001).to(torch.bfloat16)
    return IntGroupWeight(packed, scale, zero, rows, cols, bits, group_size)


def copy_bandwidth(nbytes: int = 2 * 2**30, repeats: int = 10) -> float:
    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times)


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


def checks(rec: Recorder) -> None:
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


def main(out: Path) -> None:
    started = time.time()
    copy_bw = copy_bandwidth()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "copy_bandwidth_Bps": copy_bw,
        "method": "bytes read + written per call / median time per call; calls replayed from one CUDA graph, each on its own "
        f"copy of the weight (copies rotate through >= {ROTATE_BYTES >> 20} MiB); copy bandwidth = device-to-device copy_, read + written",
    }  # fmt: skip
    rec = Recorder(out, meta)
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)
    checks(rec)

    for rows, cols in SHAPES:
        base = random_int_weight(rows, cols, 4, 128, seed=0)
        n = copies_for(base.stored_bytes())
        weights = [base] + [random_int_weight(rows, cols, 4, 128, seed=i) for i in range(1, n)]
        for batch in BATCHES:
            x = torch.randn(batch, cols, device="cuda", dtype=torch.bfloat16)
            configs = GEMV_CONFIGS if batch == 1 else [c for c in GEMM_CONFIGS if c.block_m <= max(16, batch)]
            for cfg in configs:
                key = "gemv" if batch == 1 else "gemm"
                calls = [lambda w=w: triton_int.matmul(x, w, **{key: cfg}) for w in weights]
                try:
                    med, best = graph_time(calls)
                    bench_row(rec, copy_bw, "triton-int", cfg.__dict__, 4, rows, cols, batch, med, best, base.stored_bytes())
                except Exception as e:  # a config that fails to compile is reported, not fatal
                    rec.add("rows", {"kernel": "triton-int", "config": cfg.__dict__, "rows": rows, "cols": cols, "batch": batch, "error": repr(e)[:300]})
            tg = [tinygemm.repack(w) for w in weights]
            med, best = graph_time([lambda t=t: tinygemm.matmul(x, t) for t in tg])
            bench_row(rec, copy_bw, "tinygemm", {"inner_k_tiles": 8}, 4, rows, cols, batch, med, best, tg[0].resident_bytes())
            del tg
            dense = [torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(rows * cols * 2))]
            med, best = graph_time([lambda d=d: torch.nn.functional.linear(x, d) for d in dense])
            bench_row(rec, copy_bw, "cublas-bf16", {}, 16, rows, cols, batch, med, best, rows * cols * 2)
            del dense
            if batch == 1:
                t = event_time(lambda: reference.matmul_int_group(x, base))
                bench_row(rec, copy_bw, "reference-int", {}, 4, rows, cols, batch, t, t, base.stored_bytes())
        del weights
        torch.cuda.empty_cache()
        print(f"{rows}x{cols} done at {time.time() - started:.0f} s", flush=True)

    # other bit widths at batch 1 (default config), 14336-wide shapes
    for bits in (8, 3, 2):
        for rows, cols in SHAPES[1:]:
            base = random_int_weight(rows, cols, bits, 128, seed=0)
            weights = [base] + [random_int_weight(rows, cols, bits, 128, seed=i) for i in range(1, copies_for(base.stored_bytes()))]
            x = torch.randn(1, cols, device="cuda", dtype=torch.bfloat16)
            for cfg in (triton_int.GemvConfig(), triton_int.GemvConfig(block_n=64, split_k=4)):
                med, best = graph_time([lambda w=w: triton_int.matmul(x, w, gemv=cfg) for w in weights])
                bench_row(rec, copy_bw, "triton-int", cfg.__dict__, bits, rows, cols, 1, med, best, base.stored_bytes())
            del weights
    rec.add("checks", {"check": "wall seconds", "value": time.time() - started})


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Bench rows for the quantbench runtime: random weights packed by the recipe, loaded, timed per batch.

One row per (method, batch). For each method the random artifact is packed once (synthetic.py), handed
to the fast runtime's loader (the same reader a written folder goes through), then measured:
- cold time to first token: in this process, the first prefill + CUDA-graph capture + first decode
  step, with an empty Triton cache when `cold_triton_cache` is set (a fresh machine's state);
- warm time to first token: the median prefill of the timed runs (the first token is its argmax);
- prefill and decode tokens/s (eval.speed.measure_speed: warm-up, repeats, device sync, median);
- the decode roofline: measured copy bandwidth (same run) over the bytes one decode step reads
  (every weight as stored except the input embedding table, plus the KV cache at the mean context
  for every sequence), and the fraction of it reached;
- peak device memory from the start of the load to the end of the runs, against the rule
  stored bytes + KV cache + 10%;
- the kernel used for each kind of linear, and where its arithmetic differs from the artifact's.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time

import torch

from quantbench.arch import ArchSpec
from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)

MEMORY_RULE_SLACK = 0.10  # peak <= (stored bytes + KV cache) * 1.10


def decode_bytes_per_step(arch: ArchSpec, weight_bytes: int, embed_bytes: int, prompt: int, new: int, batch: int,
                          kv_bytes_per_value: int = 2) -> int:
    """Bytes one decode step reads: weights (the input embedding is a lookup of `batch` rows, unless tied
    to lm_head) plus each sequence's K and V at the mean context prompt + new/2."""
    weights = weight_bytes - (0 if arch.tie_word_embeddings else embed_bytes)
    return weights + kv_bytes_at(arch, prompt + new / 2, batch, kv_bytes_per_value)


def kv_bytes_at(arch: ArchSpec, context: float, batch: int, bytes_per_value: int = 2) -> int:
    """K and V of every layer for `batch` sequences of `context` tokens."""
    return int(2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * context * batch * bytes_per_value)


def fast_rows(config: dict, recipe, device: str, bandwidth_bytes_per_s: float, prompt_ids: list[int], new_tokens: int,
              batches: tuple[int, ...], repeats: int, warmup: int, seed: int = 0, dtype: torch.dtype | None = None,
              progress=None) -> list[dict]:
    from quantbench.eval.speed import measure_speed
    from quantbench.runtimes.fast import FastRuntime
    from quantbench.runtimes.fast import stored as stored_mod
    from quantbench.synthetic import packed_random_artifact, stored_bytes

    say = progress or log.info
    if not device.startswith("cuda"):
        raise QuantbenchError("the quantbench runtime's bench runs on CUDA; use --runtime transformers on a CPU")
    arch = ArchSpec.from_config(config)
    gc.collect()
    torch.cuda.empty_cache()
    say(f"{recipe.name}: packing random weights on {device}")
    t0 = time.perf_counter()
    art_config, tensors, note = packed_random_artifact(config, recipe, device, seed, dtype)
    torch.cuda.synchronize()
    pack_seconds = time.perf_counter() - t0
    stored = stored_bytes(tensors)
    embed_bytes = tensors["model.embed_tokens.weight"].nbytes
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    runtime = FastRuntime.from_source(art_config, stored_mod.TensorSource(tensors=tensors, consume=True), device)
    del tensors
    torch.cuda.synchronize()
    load_seconds = time.perf_counter() - t0
    load_peak = torch.cuda.max_memory_allocated(device)

    rows = []
    for batch in batches:
        say(f"{recipe.name} [quantbench]: batch {batch}, prefill {len(prompt_ids)} + decode {new_tokens}")
        try:
            rows.append(_measure_batch(runtime, arch, recipe, device, bandwidth_bytes_per_s, prompt_ids, new_tokens,
                                       batch, repeats, warmup, stored, embed_bytes, load_peak, measure_speed))
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"method": recipe.name, "runtime": "quantbench", "batch": batch, "status": f"out of memory: {exc}"[:300]})
        rows[-1].update(stored_bytes=stored, pack_seconds=pack_seconds, load_seconds=load_seconds, note=note)
    runtime.close()
    del runtime
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def _measure_batch(runtime, arch, recipe, device, bandwidth, prompt_ids, new_tokens, batch, repeats, warmup, stored,
                   embed_bytes, load_peak, measure_speed) -> dict:
    torch.cuda.reset_peak_memory_stats(device)
    # Cold: first prefill at this batch + graph capture + first decode step.
    runtime.synchronize()
    t0 = time.perf_counter()
    runtime.prefill(prompt_ids, batch)  # the default room, so the timed runs below reuse this cache and graph
    runtime.decode(1)
    runtime.synchronize()
    cold = time.perf_counter() - t0
    speed = measure_speed(runtime, prompt_ids, new_tokens, batch, repeats, warmup)
    kv = runtime.decoder.kv_cache_bytes()
    peak = max(torch.cuda.max_memory_allocated(device), load_peak)
    limit = (stored + kv) * (1 + MEMORY_RULE_SLACK)
    per_step = decode_bytes_per_step(arch, runtime.weight_bytes, embed_bytes, len(prompt_ids), new_tokens, batch)
    ceiling = batch * bandwidth / per_step
    return {
        "method": recipe.name,
        "runtime": "quantbench",
        "status": "ok",
        "batch": batch,
        "resident_weight_bytes": runtime.weight_bytes,
        "kv_cache_bytes": kv,
        "peak_bytes": peak,
        "memory_rule_limit_bytes": int(limit),
        "memory_rule_ok": peak <= limit,
        "cold_ttft_s": cold,
        "warm_ttft_s": speed["ttft_s"],
        **{k: speed[k] for k in ("prefill_tok_s", "decode_tok_s", "decode_tok_s_min", "decode_tok_s_max", "repeats", "warmup")},
        "bytes_read_per_decode_step": int(per_step),
        "ceiling_decode_tok_s": ceiling,
        "fraction_of_ceiling": speed["decode_tok_s"] / ceiling,
        "kernels": dict(runtime.kernels),
        "decode_mode": runtime.decode_mode,
        "numerics": list(runtime.numerics),
        "compute_dtype": runtime.dtype,
    }


class fresh_triton_cache:
    """Point Triton at an empty cache for the duration (cold-start timing), then restore the setting."""

    def __enter__(self):
        self._old = os.environ.get("TRITON_CACHE_DIR")
        self._dir = tempfile.TemporaryDirectory(prefix="triton-cold-")
        os.environ["TRITON_CACHE_DIR"] = self._dir.name
        return self

    def __exit__(self, *exc):
        if self._old is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = self._old
        self._dir.cleanup()

"""Prefill and decode throughput at a fixed batch, with warm-up, repeats and device sync.

prefill_tok_s = batch * prompt_tokens / t_prefill (one forward over the prompt into a fresh KV cache);
ttft_s = t_prefill (the first new token is the argmax of the prefill logits);
decode_tok_s = batch * new_tokens / t_decode (one token at a time with the KV cache, after prefill).
Reported as the median of `repeats` runs after `warmup` untimed runs, with min and max beside it.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

from quantbench.eval.metrics import register_runtime_metric


def measure_speed(runtime, prompt_ids: Sequence[int], new_tokens: int, batch: int = 1, repeats: int = 3, warmup: int = 1) -> dict:
    prefill_s, decode_s = [], []
    for run in range(warmup + repeats):
        runtime.synchronize()
        t0 = time.perf_counter()
        runtime.prefill(prompt_ids, batch)
        runtime.synchronize()
        t1 = time.perf_counter()
        runtime.decode(new_tokens)
        runtime.synchronize()
        t2 = time.perf_counter()
        if run >= warmup:
            prefill_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    n_prompt = batch * len(prompt_ids)
    n_new = batch * new_tokens
    return {
        "prefill_tok_s": n_prompt / statistics.median(prefill_s),
        "prefill_tok_s_min": n_prompt / max(prefill_s),
        "prefill_tok_s_max": n_prompt / min(prefill_s),
        "decode_tok_s": n_new / statistics.median(decode_s),
        "decode_tok_s_min": n_new / max(decode_s),
        "decode_tok_s_max": n_new / min(decode_s),
        "ttft_s": statistics.median(prefill_s),
        "batch": batch,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
    }


def _speed_metric(runtime, job) -> dict:
    s = job.speed
    return measure_speed(runtime, s.prompt_ids, s.new_tokens, s.batch, s.repeats, s.warmup) if s else {}


register_runtime_metric("speed", "generation", _speed_metric)

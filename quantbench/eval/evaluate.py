"""One artifact measured in this process: load, generation metrics, peak memory, window metrics
over the shared reference, scoring metrics. Runs inside the worker (quantbench.jobs.EvaluateJob), so
the peak memory it reads is this artifact's own."""

from __future__ import annotations

import time
from pathlib import Path

from quantbench.device import current_rss_bytes, peak_bytes, peak_kind, reset_peak
from quantbench.eval.divergence import log_softmax
from quantbench.eval import metrics as registry
from quantbench.eval.reference import Reference


def evaluate_in_this_process(job) -> dict:
    """The evaluation's part of a result row (quantbench.eval.results.Measured), as a dict for the worker."""
    from quantbench.recipes.open import open_artifact

    registry.discover()
    baseline_rss = current_rss_bytes()
    reset_peak(job.device)
    t0 = time.perf_counter()
    runtime = open_artifact(Path(job.artifact), job.device, job.runtime)
    load_seconds = time.perf_counter() - t0
    loaded_rss = current_rss_bytes() - baseline_rss
    measured_on = runtime.device.split()[0]  # "cuda:0 (NVIDIA H200)" -> "cuda:0"; llama.cpp runs on the CPU
    metrics: dict = {}

    # Generation first: the peak after load + generation is what running the model costs; the window
    # metrics below hold full-vocabulary log-probs for a window, which is evaluation overhead.
    for metric in registry.RUNTIME_METRICS.values():
        if metric.phase == "generation":
            metrics.update(metric.measure(runtime, job))
    peak, kind = peak_bytes(measured_on), peak_kind(measured_on)
    if getattr(runtime, "gpu", False):  # llama.cpp on the GPU: its memory is invisible to torch's allocator
        buffers = runtime.device_buffers()
        peak = int(sum(v for k, v in buffers.items() if k.startswith("CUDA") and k != "CUDA"))
        kind = "llama.cpp's CUDA buffer report (model + KV cache + compute)"

    reference = Reference(Path(job.reference_path))
    reference.check_matches([w.targets for w in job.windows])
    accumulators = [make() for make in registry.WINDOW_METRICS.values()]
    for k in range(reference.windows):
        window = job.windows[k]
        logprobs = log_softmax(runtime.logits(window.input_ids)[window.first_scored :])
        for acc in accumulators:
            acc.add(logprobs, reference.targets(k), reference.logprobs(k))
    for acc in accumulators:
        metrics.update(acc.summary())

    for metric in registry.RUNTIME_METRICS.values():
        if metric.phase == "scoring":
            metrics.update(metric.measure(runtime, job))

    measured = {
        "runtime": runtime.name,
        "device": runtime.device,
        "dtype": runtime.dtype,
        "load_seconds": load_seconds,
        "reported_footprint_bytes": runtime.reported_footprint_bytes(),
        "loaded_rss_bytes": loaded_rss,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "process_baseline_rss_bytes": baseline_rss,
        "eval_peak_memory_bytes": peak_bytes(measured_on),
        "metrics": metrics,
    }
    runtime.close()
    return measured

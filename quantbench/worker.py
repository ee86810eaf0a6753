"""Jobs that run in a fresh process, so that each method's peak memory is its own.

`python -m quantbench.worker JOB.json RESULT.json`; the API builds the job and reads the result.
A QuantbenchError inside the job comes back as {"error": message}.
"""

from __future__ import annotations

import os

# A CUDA build of llama.cpp segfaulted at model load when numpy or torch had been imported before it
# (REFERENCE section 3): a job that runs llama.cpp on the GPU has it imported before anything else.
if __name__ == "__main__" and os.environ.get("QUANTBENCH_LLAMA_CPP_FIRST") == "1":
    import llama_cpp  # noqa: F401

import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from quantbench.artifact import write_json_atomic  # noqa: E402
from quantbench.errors import QuantbenchError  # noqa: E402

log = logging.getLogger(__name__)


def run_in_fresh_process(job: dict, env: dict[str, str] | None = None) -> dict:
    """Run `job` in a new Python process; `env` adds to its environment (e.g. CUDA_VISIBLE_DEVICES)."""
    with tempfile.TemporaryDirectory(prefix="quantbench-job-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job, default=str))
        timeout = float(os.environ.get("QUANTBENCH_JOB_TIMEOUT", 4 * 3600))
        try:
            env = {**os.environ, **(env or {}), "QUANTBENCH_LLAMA_CPP_FIRST": "1" if job.get("llama_cpp_first") else "0"}
            proc = subprocess.run([sys.executable, "-m", "quantbench.worker", str(job_path), str(result_path)],
                                  stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise QuantbenchError(f"{job['kind']} job ran over {timeout:.0f} s and was stopped "
                                  "(raise QUANTBENCH_JOB_TIMEOUT if the model is that large)") from None
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise QuantbenchError(result["error"])
            return result
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        if proc.returncode in (-9, 137):
            raise QuantbenchError(f"{job['kind']} job was killed (out of memory?); try a smaller model or method.\n{tail}")
        raise QuantbenchError(f"{job['kind']} job failed (exit {proc.returncode}):\n{tail}")


def job_reference(job: dict) -> dict:
    from quantbench.eval.perplexity import Window
    from quantbench.eval.reference import compute_reference
    from quantbench.runtimes.hf import HFRuntime

    # JSON turned accelerate's integer GPU keys into strings
    max_memory = {int(k) if str(k).isdigit() else k: v for k, v in (job.get("max_memory") or {}).items()} or None
    runtime = HFRuntime.load(Path(job["model_path"]), job["device"], dtype=None, trust_remote_code=job.get("trust_remote_code", False),
                             max_memory=max_memory)
    windows = [Window(**w) for w in job["windows"]]
    placement = {"max_memory": job.get("max_memory"), "device_map": runtime.placement} if max_memory else {}
    compute_reference(runtime, windows, Path(job["reference_path"]), {**job["meta"], "dtype": runtime.dtype, "device": runtime.device, **placement})
    return {"dtype": runtime.dtype, "device": runtime.device, **placement}


def job_quantize(job: dict) -> dict:
    from quantbench.device import peak_bytes, reset_peak
    from quantbench.recipes import get_recipe
    from quantbench.recipes.base import QuantizeJob
    from quantbench.sources.model import ModelSource

    recipe = get_recipe(job["method"])
    source = ModelSource(Path(job["model_path"]), job["model_name"], job["model_fingerprint"])
    calibration = job.get("calibration") or []
    from quantbench.plan.resources import check_quantize_resources

    options = job.get("options", {})
    resources = check_quantize_resources(Path(job["model_path"]), job["method"], Path(job["out_dir"]), job["device"],
                                         len(calibration), options.get("calibration_length") or 0, job.get("replaced_bytes", 0))
    reset_peak(job["device"])
    t0 = time.perf_counter()
    meta = recipe.quantize(QuantizeJob(source, Path(job["out_dir"]), job["device"], lambda: calibration, job.get("options", {})))
    return {"metadata": meta, "quantize_seconds": time.perf_counter() - t0, "quantize_peak_bytes": peak_bytes(job["device"]),
            "resources_checked": resources}


def job_evaluate(job: dict) -> dict:
    from quantbench.device import current_rss_bytes, peak_bytes, peak_kind, reset_peak
    from quantbench.eval.divergence import QualityAccumulator, log_softmax
    from quantbench.eval.reference import Reference
    from quantbench.eval.speed import measure_speed
    from quantbench.recipes.open import open_artifact

    device = job["device"]
    baseline_rss = current_rss_bytes()
    reset_peak(device)
    t0 = time.perf_counter()
    runtime = open_artifact(Path(job["artifact"]), device, job.get("runtime"))
    load_seconds = time.perf_counter() - t0
    row = {"runtime": runtime.name, "device": runtime.device, "dtype": runtime.dtype, "load_seconds": load_seconds}
    row["reported_footprint_bytes"] = runtime.reported_footprint_bytes()
    row["loaded_rss_bytes"] = current_rss_bytes() - baseline_rss

    # Speed first: the peak after load + generation is what running the model costs; the quality
    # pass below holds full-vocabulary log-probs for a window, which is evaluation overhead.
    speed = job.get("speed")
    if speed:
        row.update(measure_speed(runtime, speed["prompt_ids"], speed["new_tokens"], speed["batch"], speed["repeats"], speed["warmup"]))
    measured_on = runtime.device.split()[0]  # "cuda:0 (NVIDIA H200)" -> "cuda:0"; llama.cpp runs on the CPU
    row["peak_memory_bytes"] = peak_bytes(measured_on)
    row["peak_memory_kind"] = peak_kind(measured_on)
    if getattr(runtime, "gpu", False):  # llama.cpp on the GPU: its memory is invisible to torch's allocator
        buffers = runtime.device_buffers()
        row["peak_memory_bytes"] = int(sum(v for k, v in buffers.items() if k.startswith("CUDA") and k != "CUDA"))
        row["peak_memory_kind"] = "llama.cpp's CUDA buffer report (model + KV cache + compute)"
    row["process_baseline_rss_bytes"] = baseline_rss

    reference = Reference(Path(job["reference_path"]))
    reference.check_matches([w["targets"] for w in job["windows"]])
    quality = QualityAccumulator()
    for k in range(reference.windows):
        window = job["windows"][k]
        logits = runtime.logits(window["input_ids"])[window["first_scored"] :]
        quality.add(log_softmax(logits), reference.targets(k), reference.logprobs(k))
    row.update(quality.summary())

    if job.get("tasks"):
        from quantbench.eval.tasks import task_accuracy

        row.update(task_accuracy(runtime, job["tasks"]))

    row["eval_peak_memory_bytes"] = peak_bytes(measured_on)
    runtime.close()
    return row


JOBS = {"reference": job_reference, "quantize": job_quantize, "evaluate": job_evaluate}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text())
    try:
        result = JOBS[job["kind"]](job)
    except QuantbenchError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # report the cause to the parent; it adds context for the user
        result = {"error": f"{job['kind']} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}
    write_json_atomic(result_path, result)


if __name__ == "__main__":
    main()

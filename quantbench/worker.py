"""Run a job (quantbench.jobs) in a fresh process, so that each method's peak memory is its own.

`python -m quantbench.worker JOB.json RESULT.json`; the API builds the job and reads the result.
A QuantbenchError inside the job comes back as {"error": message}. The worker only dispatches: what
a job does lives with the job.
"""

from __future__ import annotations

import os

# A runtime may need its module imported before numpy and torch (Runtime.import_first_on_cuda: a CUDA
# build of llama.cpp segfaulted at model load otherwise): the job names it, the worker imports it first.
if __name__ == "__main__" and os.environ.get("QUANTBENCH_IMPORT_FIRST"):
    __import__(os.environ["QUANTBENCH_IMPORT_FIRST"])

import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from quantbench.artifact import write_json_atomic  # noqa: E402
from quantbench.errors import QuantbenchError  # noqa: E402
from quantbench.jobs import from_json, to_json  # noqa: E402

log = logging.getLogger(__name__)


def run_in_fresh_process(job, env: dict[str, str] | None = None) -> dict:
    """Run `job` (quantbench.jobs) in a new Python process; `env` adds to its environment (e.g. CUDA_VISIBLE_DEVICES)."""
    with tempfile.TemporaryDirectory(prefix="quantbench-job-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(to_json(job), default=str))
        timeout = float(os.environ.get("QUANTBENCH_JOB_TIMEOUT", 4 * 3600))
        try:
            env = {**os.environ, **(env or {}), "QUANTBENCH_IMPORT_FIRST": getattr(job, "import_first", None) or ""}
            proc = subprocess.run([sys.executable, "-m", "quantbench.worker", str(job_path), str(result_path)],
                                  stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise QuantbenchError(f"{job.kind} job ran over {timeout:.0f} s and was stopped "
                                  "(raise QUANTBENCH_JOB_TIMEOUT if the model is that large)") from None
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise QuantbenchError(result["error"])
            return result
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        if proc.returncode in (-9, 137):
            raise QuantbenchError(f"{job.kind} job was killed (out of memory?); try a smaller model or method.\n{tail}")
        raise QuantbenchError(f"{job.kind} job failed (exit {proc.returncode}):\n{tail}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads(job_path.read_text())
    try:
        result = from_json(data).run()
    except QuantbenchError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # report the cause to the parent; it adds context for the user
        result = {"error": f"{data['kind']} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}
    write_json_atomic(result_path, result)


if __name__ == "__main__":
    main()

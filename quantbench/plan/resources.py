"""Will a quantize job fit this machine? Checked in the job's own process before any work starts.

The plan's numbers for one method (quantbench.plan.plan: the streaming peak of every term, the disk
the job needs) against what is free right now: disk on the output's filesystem, available RAM and,
when the job runs on a GPU, that GPU's free memory. One clear error each, naming what to do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from quantbench.errors import QuantbenchError


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_quantize_resources(model_path: Path, method: str, out_dir: Path, device: str, calibration_samples: int,
                             calibration_length: int, replaced_bytes: int = 0) -> dict:
    """Raise QuantbenchError when the planned disk, host RAM or GPU memory exceeds what is free; return the figures."""
    import psutil

    from quantbench.plan import plan

    kind = "cuda" if device.startswith("cuda") else "cpu"
    memory = None
    if kind == "cuda":
        import torch

        memory = int(torch.cuda.mem_get_info(torch.device(device).index or 0)[0])
    result = plan(str(model_path), methods=[method], device=kind, device_memory_bytes=memory if memory is not None else 0,
                  calibration_samples=max(1, calibration_samples), calibration_length=max(1, calibration_length))
    row = result["methods"][0]
    if not row.get("planned"):
        return {"checked": False, "reason": row.get("no_plan_reason")}
    q = row["quantize"]
    disk_need = row["quantize_disk_bytes"] + replaced_bytes
    disk_free = shutil.disk_usage(_existing(out_dir)).free
    if disk_need > disk_free:
        parts = " + ".join(f"{name} {_gb(b)}" for name, b in q.get("disk_parts", {}).items())
        raise QuantbenchError(
            f"{method}: not enough disk at {out_dir}: the job needs {_gb(disk_need)} ({parts}), {_gb(disk_free)} is free. "
            "Free some space or write the artifact elsewhere (-o on another disk)."
        )
    ram_need, ram_free = row["quantize_host_peak_bytes"], int(psutil.virtual_memory().available)
    if ram_need > ram_free:
        raise QuantbenchError(
            f"{method}: not enough host memory even streaming from disk: the plan needs {_gb(ram_need)} "
            f"(`quantbench plan {model_path} --methods {method}` lists every term), {_gb(ram_free)} is available. "
            "Close other programs, use fewer --calibration-samples, or a machine with more RAM."
        )
    if kind == "cuda" and row["quantize_runs_on"] != "host" and row["quantize_peak_bytes"] > memory:
        raise QuantbenchError(
            f"{method}: not enough memory on {device} even one layer at a time: the plan needs {_gb(row['quantize_peak_bytes'])}, "
            f"{_gb(memory)} is free. Free the GPU, use fewer --calibration-samples / a shorter --calibration-length, or a larger GPU."
        )
    return {"checked": True, "disk_need_bytes": disk_need, "disk_free_bytes": disk_free, "host_need_bytes": ram_need,
            "host_available_bytes": ram_free, "device_need_bytes": row["quantize_peak_bytes"] if kind == "cuda" else None,
            "device_free_bytes": memory}


def _existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path

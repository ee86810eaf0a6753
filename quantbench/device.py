"""Device policy and memory probes, in one place: which device runs, what it computes in, and how
much memory this process holds now and at its peak.

CPU memory is the process's resident set (the only number that includes Python, torch and the
model); CUDA memory is what torch's caching allocator handed out (torch.cuda.memory_allocated /
max_memory_allocated), which leaves out the CUDA context and the allocator's unused cache.
"""

from __future__ import annotations

import resource
import sys

from quantbench.errors import QuantbenchError


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | None) -> str:
    """'auto' / None -> cuda when present, else cpu; a CUDA request without CUDA is a clear error."""
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise QuantbenchError("--device cuda asked for, but this machine has no CUDA GPU; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise QuantbenchError(f"unknown device '{device}'; use cpu, cuda or cuda:N")
    return device


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def best_half_dtype(device: str):
    """bf16 where the device computes it natively, else fp16 on CUDA and fp32 on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def free_memory(device: str) -> tuple[int, str]:
    """Memory free for a model on `device`, and where the number comes from: free CUDA memory
    (torch.cuda.mem_get_info) or available RAM (psutil)."""
    if device.startswith("cuda"):
        import torch

        if not cuda_available():
            raise QuantbenchError(
                "planning for a GPU, but this machine has none: pass --device-memory (e.g. 24GB) for the GPU you mean"
            )
        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return int(free), f"free memory of cuda:{index} ({torch.cuda.get_device_name(index)}, {total / 1e9:.1f} GB total)"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM (psutil)"


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    Linux: VmHWM from /proc/self/status, which belongs to this program's address space. getrusage's
    ru_maxrss is NOT used there: it survives fork+exec, so a worker would inherit its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak(device: str) -> None:
    """Start a new CUDA peak; a no-op on CPU, where the process peak (VmHWM) cannot be reset."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def allocated_bytes(device: str) -> int:
    """Memory in use now: CUDA bytes allocated on `device`, or this process's RSS on CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated(device))
    return current_rss_bytes()


def peak_cuda_bytes(device: str) -> int | None:
    """Peak CUDA bytes allocated since the last reset_peak; None on CPU (no per-phase peak there)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return None


def peak_bytes(device: str) -> int:
    """The peak that a measurement on `device` reports: CUDA peak allocated, else the process peak RSS."""
    peak = peak_cuda_bytes(device)
    return peak_rss_bytes() if peak is None else peak


def peak_kind(device: str) -> str:
    """What peak_bytes(device) measured, in words, for the report."""
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated"
    return "process peak RSS (VmHWM) incl. Python and torch"


def resolve_devices(devices: list[str] | None, device: str) -> list[str]:
    """The devices `compare` spreads independent methods over, checked before any work.

    No list: every visible GPU when `device` is "cuda", else just `device`. A list: each entry must be
    `cuda:N` for a GPU this process sees (CUDA_VISIBLE_DEVICES applies), named once.
    """
    if not devices:
        if device == "cuda" and cuda_available():
            import torch

            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [device]
    if device == "cpu" or not all(d.startswith("cuda:") for d in devices):
        raise QuantbenchError(f"--devices {','.join(devices)}: name GPUs as cuda:N (e.g. cuda:0,cuda:1); on a CPU leave it out")
    if not cuda_available():
        raise QuantbenchError(f"--devices {','.join(devices)}: this machine has no CUDA GPU")
    import torch

    count = torch.cuda.device_count()
    seen = set()
    for d in devices:
        index = d.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= count:
            raise QuantbenchError(f"--devices names {d}, but this process sees {count} GPU(s): cuda:0..cuda:{count - 1}")
        if d in seen:
            raise QuantbenchError(f"--devices names {d} twice")
        seen.add(d)
    return list(devices)


def isolate_gpu(device: str) -> tuple[dict[str, str], str]:
    """(environment, device name inside) for a fresh process that may see only `device` (cuda:N):
    CUDA_VISIBLE_DEVICES is the N-th GPU of this process's own visible list, and inside it is "cuda"."""
    import os

    if not device.startswith("cuda:"):
        return {}, device
    index = int(device.removeprefix("cuda:"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[index].strip() if visible else str(index)
    return {"CUDA_VISIBLE_DEVICES": physical}, "cuda"


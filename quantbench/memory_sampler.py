"""Peak ANONYMOUS and file-backed memory of a process, sampled in a background thread.

VmHWM (the kernel's peak resident set) counts pages of memory-mapped files: safetensors' safe_open
and llama.cpp's quantizer map their input, so a job reading a 16 GB checkpoint shows a 16 GB VmHWM
although those are clean page-cache pages the kernel drops whenever it needs the room. What a job
really needs is its anonymous memory (heap, tensors): RssAnon in /proc/PID/status. The kernel keeps
no high-water mark of RssAnon, so it is sampled; RssFile (file-backed pages) is sampled beside it
and reported separately.

A sampler misses a spike shorter than its interval. Torch releases the GIL inside its kernels and
Python switches threads every 5 ms (sys.getswitchinterval), so the thread samples during long
tensor operations too; callers can also call `sample()` at points they know are peaks.

    with MemorySampler() as sampler:
        do_the_work()
    sampler.peaks.anon_bytes, sampler.peaks.file_bytes
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

_FIELDS = {"RssAnon:": "anon_bytes", "RssFile:": "file_bytes", "RssShmem:": "shmem_bytes", "VmHWM:": "hwm_bytes"}


@dataclass(frozen=True)
class MemoryReading:
    anon_bytes: int  # RssAnon: heap, tensors, stacks
    file_bytes: int  # RssFile: resident pages of mapped files (shared libraries, mmapped checkpoints)
    shmem_bytes: int  # RssShmem: shared memory (e.g. /dev/shm, CUDA IPC)
    hwm_bytes: int  # VmHWM: the kernel's peak of anon + file + shmem, mapped files included


def read_memory(pid: int | str = "self") -> MemoryReading:
    """One reading of /proc/PID/status (Linux only)."""
    values = dict.fromkeys(_FIELDS.values(), 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key in _FIELDS:
                    values[_FIELDS[key]] = int(line.split()[1]) * 1024  # the kernel prints kB
    except FileNotFoundError:
        raise RuntimeError(f"/proc/{pid}/status not found: anonymous-memory sampling needs Linux and a live process") from None
    return MemoryReading(**values)


@dataclass(frozen=True)
class MemoryPeaks:
    """What a job's report carries: each field's maximum over the samples, and where it started."""

    anon_bytes: int  # peak RssAnon
    file_bytes: int  # peak RssFile (separately: it need not coincide with the anon peak)
    hwm_bytes: int  # VmHWM at the end: the kernel's own peak, mapped files included
    baseline_anon_bytes: int  # RssAnon when sampling started
    samples: int
    interval_s: float

    def as_dict(self) -> dict:
        return asdict(self)


class MemorySampler:
    """Samples a process's /proc status every `interval_s` seconds while running (default: this process)."""

    def __init__(self, interval_s: float = 0.002, pid: int | str = "self"):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.pid = pid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline = 0
        self._anon = self._file = self._hwm = 0
        self._samples = 0

    def sample(self) -> MemoryReading:
        """Take one sample now (also called by the thread)."""
        reading = read_memory(self.pid)
        with self._lock:
            self._anon = max(self._anon, reading.anon_bytes)
            self._file = max(self._file, reading.file_bytes)
            self._hwm = max(self._hwm, reading.hwm_bytes)
            self._samples += 1
        return reading

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except RuntimeError:  # the watched process ended
                return

    def start(self) -> "MemorySampler":
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._baseline = self.sample().anon_bytes
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryPeaks:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            try:
                self.sample()
            except RuntimeError:
                pass
        return self.peaks

    @property
    def peaks(self) -> MemoryPeaks:
        with self._lock:
            return MemoryPeaks(self._anon, self._file, self._hwm, self._baseline, self._samples, self.interval_s)

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

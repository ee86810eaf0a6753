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

Phases: `sampler.phase("one linear")` attributes the samples from then on to that phase, and
`peaks.phases` holds each phase's peak RssAnon, so a measurement can be held against a plan phase by
phase (quantbench.streaming.budget).

Freed memory is not always returned: torch's CPU tensors come from glibc's malloc, which serves
allocations below its mmap threshold (dynamic, growing up to 32 MB) from heaps and keeps freed chunks
there, resident, for reuse that does not always happen; RssAnon then exceeds the live tensors by an
amount that varies run to run (measured: a phase planned at 32 MB peaked at 30-53 MB over three runs).
`map_large_allocations()` gives every allocation of 1 MiB or more its own mapping, returned to the
kernel when freed, and `release_free_heap()` hands back what the heaps hold (malloc_trim). With both,
a streaming quantize agreed with its plan within 5 % in every phase (streaming/budget.py).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from dataclasses import asdict, dataclass, field

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
    phases: dict[str, int] = field(default_factory=dict)  # phase -> its peak RssAnon (see MemorySampler.phase)

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
        self._phase: str | None = None
        self._phase_count = 0  # bumped at every switch, so a reading taken across a switch counts for neither
        self._phases: dict[str, int] = {}

    def sample(self) -> MemoryReading:
        """Take one sample now (also called by the thread)."""
        with self._lock:
            phase, count = self._phase, self._phase_count
        reading = read_memory(self.pid)
        with self._lock:
            self._anon = max(self._anon, reading.anon_bytes)
            self._file = max(self._file, reading.file_bytes)
            self._hwm = max(self._hwm, reading.hwm_bytes)
            self._samples += 1
            if phase is not None and count == self._phase_count:
                self._phases[phase] = max(self._phases.get(phase, 0), reading.anon_bytes)
        return reading

    def phase(self, name: str) -> None:
        """From now on, samples also count toward phase `name`'s peak (peaks.phases)."""
        self.sample()  # the previous phase's last reading
        with self._lock:
            self._phase, self._phase_count = name, self._phase_count + 1
        self.sample()  # the new phase's first reading

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
            return MemoryPeaks(self._anon, self._file, self._hwm, self._baseline, self._samples, self.interval_s, dict(self._phases))

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


M_MMAP_THRESHOLD = -3  # glibc malloc.h: mallopt parameter number


def map_large_allocations(threshold_bytes: int = 2**20) -> None:
    """Process-wide: glibc serves every allocation of `threshold_bytes` or more with its own mapping, so
    a freed tensor leaves RssAnon at once (setting it also stops glibc raising the threshold by itself).
    For quantize jobs, which run in their own worker process; a no-op on other C libraries."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)


def release_free_heap() -> None:
    """Return the heap memory this process has freed to the kernel (glibc malloc_trim); elsewhere a no-op."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    """The process's own C library (glibc on Linux), or None elsewhere."""
    return ctypes.CDLL(None) if sys.platform.startswith("linux") else None

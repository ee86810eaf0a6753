"""One tensor at a time from the checkpoint on disk to the artifact: the loop RTN and bitsandbytes share.

For each tensor of the arch record, in order: read it (pread, anonymous memory); a linear goes to the
method's `quantize_linear`, which returns the tensors to store (on the device that computed them; the
writer copies them to the host a slice at a time); any other tensor is stored in `dense_dtype`. Then
everything of that tensor is dropped and the freed heap returned to the kernel before the next is read,
so the host holds one tensor's work at a time: what quantbench.streaming.budget counts, phase by phase.
The sampler records each phase's peak RssAnon under the same names the budget uses (tested in
tests/test_streaming_memory.py: within 5 % per phase).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from quantbench.arch import LINEAR, ArchSpec
from quantbench.artifact import write_text_atomic
from quantbench.formats.safetensors_stream import CheckpointReader, ShardedWriter
from quantbench.memory_sampler import MemoryPeaks, MemorySampler, map_large_allocations, release_free_heap

# Phase names, shared with quantbench.streaming.budget (plan and measurement are compared by name).
PHASE_DENSE = "non-linear tensors (embedding, lm_head, norms), one at a time"
PHASE_LINEAR = "one linear"

# quantize_linear(tensor name, W as read from the checkpoint, phase) -> {stored name: tensor}; it calls
# phase(name) when it moves to another of its budget phases.
QuantizeLinear = Callable[[str, torch.Tensor, Callable[[str], None]], dict[str, torch.Tensor]]


@dataclass
class StreamedArtifact:
    tensor_bytes: dict[str, int]
    files: list[Path]
    seconds: float
    memory: MemoryPeaks  # host: peak RssAnon / RssFile while quantizing, and per phase
    peak_device_bytes: int | None = None
    errors: dict = field(default_factory=dict)  # calibrated methods: per-linear output errors
    notes: list[str] = field(default_factory=list)


def quantize_tensorwise(source_dir: Path, out_dir: Path, artifact_config: dict, quantize_linear: QuantizeLinear,
                        dense_dtype: torch.dtype, device: str, max_shard_bytes: int = 5 * 2**30) -> StreamedArtifact:
    """Every tensor of the checkpoint in `source_dir` through `quantize_linear` or stored as is, into `out_dir`."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    arch = ArchSpec.from_config(json.loads((source_dir / "config.json").read_text()))
    reader = CheckpointReader(source_dir)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    # Freed tensors leave RssAnon at once, and the baseline is what the process holds, not heap pages it
    # already freed: so the measured phases are the plan's live tensors (memory_sampler's docstring).
    map_large_allocations()
    release_free_heap()
    start = time.perf_counter()
    with MemorySampler() as sampler, torch.no_grad(), ShardedWriter(out_dir, max_shard_bytes) as writer:

        def phase(name: str) -> None:
            release_free_heap()
            sampler.phase(name)

        for spec in arch.tensors():
            _one_tensor(reader, writer, spec, quantize_linear, dense_dtype, phase)  # its locals die with the call
        written = writer.close()
    peak_device = None
    if on_cuda:
        torch.cuda.synchronize(device)
        peak_device = torch.cuda.max_memory_allocated(device)
    write_text_atomic(out_dir / "config.json", json.dumps(artifact_config, indent=2, sort_keys=True))
    return StreamedArtifact(written.tensor_bytes, written.files, time.perf_counter() - start, sampler.peaks, peak_device)


def _one_tensor(reader: CheckpointReader, writer: ShardedWriter, spec, quantize_linear: QuantizeLinear,
                dense_dtype: torch.dtype, phase: Callable[[str], None]) -> None:
    if spec.role != LINEAR:
        phase(PHASE_DENSE)
        writer.add(spec.name, reader.read(spec.name), dense_dtype)
        return
    phase(PHASE_LINEAR)
    for name, tensor in quantize_linear(spec.name, reader.read(spec.name), phase).items():
        writer.add(name, tensor)

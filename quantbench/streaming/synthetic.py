"""A checkpoint with random weights for any Llama-family config, written shard by shard.

For measuring memory and time at full scale without downloading anything: every tensor of the arch
record gets N(0, std) values (norms: ones), generated and appended one tensor at a time, so writing
a 16 GB checkpoint needs about one tensor of memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantbench.arch import NORM, ArchSpec
from quantbench.artifact import write_json_atomic
from quantbench.formats.safetensors_stream import ShardedWriter


def write_random_checkpoint(config: dict, out_dir: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0, std: float = 0.02,
                            max_shard_bytes: int = 5 * 2**30, device: str = "cpu") -> Path:
    """config.json + sharded safetensors of random weights in out_dir; returns out_dir.
    `device="cuda"` draws the numbers on the GPU (an 8B model in seconds; other values than on the CPU)."""
    out_dir = Path(out_dir)
    arch = ArchSpec.from_config(config)
    generator = torch.Generator(device).manual_seed(seed)
    with ShardedWriter(out_dir, max_shard_bytes, fsync=False) as writer:
        for spec in arch.tensors():
            if spec.role == NORM and spec.name.endswith("norm.weight"):
                t = torch.ones(spec.shape, dtype=dtype)
            else:
                t = (torch.randn(spec.shape, generator=generator, device=device) * std).to(dtype).cpu()
            writer.add(spec.name, t)
            del t
    written = {**config, "dtype": str(dtype).removeprefix("torch.")}
    write_json_atomic(out_dir / "config.json", written)
    return out_dir

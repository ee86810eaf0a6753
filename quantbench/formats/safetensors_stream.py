"""Bytes only: read safetensors checkpoints one tensor at a time, write them shard by shard.

File layout (safetensors spec, huggingface/safetensors README):

    | u64 little-endian N | N bytes of JSON header, may end in spaces | data region |
    header: {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
             "__metadata__": {"format": "pt"}}          offsets are relative to the data region

Reading: `CheckpointReader` parses only the headers, then reads each requested tensor with one
pread straight into a fresh tensor's memory. Nothing is memory-mapped, so the process holds only
the tensors it asked for (anonymous memory) and no file-backed pages of the checkpoint.

Writing: `ShardedWriter` appends each tensor's bytes to the current shard as it arrives and keeps
only the header entries in memory. Each shard starts with a RESERVED header region (`header_bytes`,
padded with spaces as the spec allows); a shard is closed and a new one begun when the next tensor
would overflow either the shard's byte budget or its header region. Shards are written under
temporary names and renamed, with the index, only when the writer is closed without error.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from quantbench.errors import QuantbenchError
from quantbench.formats.safetensors import data_start, read_header

if TYPE_CHECKING:
    from quantbench.arch import ArchSpec

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors are cast and written in slices of this many bytes (bounds the converted copy in memory).
CONVERT_SLICE_BYTES = 64 * 2**20

# safetensors dtype names (safetensors/src/tensor.rs Dtype) <-> torch.
DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offset of the first byte in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_entries(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of one file with absolute offsets (the header is checked by formats.safetensors)."""
    header = read_header(path)
    start = data_start(path)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise QuantbenchError(f"{path}: tensor {name} has dtype {info['dtype']}, which quantbench does not read")
        begin, end = info["data_offsets"]
        out[name] = TensorEntry(info["dtype"], tuple(info["shape"]), start + begin, start + end)
    return out


class CheckpointReader:
    """Lazy access to every tensor of an HF folder's safetensors shards (or of one file)."""

    def __init__(self, path: Path):
        path = Path(path)
        shards = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        if not shards:
            raise QuantbenchError(f"{path}: no *.safetensors weights")
        self._where: dict[str, tuple[Path, TensorEntry]] = {}
        for shard in shards:
            for name, entry in read_entries(shard).items():
                if name in self._where:
                    raise QuantbenchError(f"{path}: tensor {name} appears in two shards ({self._where[name][0].name}, {shard.name})")
                self._where[name] = (shard, entry)

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def entry(self, name: str) -> TensorEntry:
        return self._lookup(name)[1]

    def total_bytes(self) -> int:
        return sum(entry.nbytes for _, entry in self._where.values())

    def _lookup(self, name: str) -> tuple[Path, TensorEntry]:
        try:
            return self._where[name]
        except KeyError:
            raise QuantbenchError(f"tensor {name} is not in the checkpoint; is this the model the config describes?") from None

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read with pread into its own (anonymous) memory on the CPU."""
        shard, entry = self._lookup(name)
        out = torch.empty(entry.nbytes, dtype=torch.uint8)
        view = memoryview(out.numpy())
        with open(shard, "rb", buffering=0) as f:
            done = 0
            while done < entry.nbytes:
                got = os.preadv(f.fileno(), [view[done:]], entry.begin + done)
                if got <= 0:
                    raise QuantbenchError(f"{shard}: short read of {name}; the file changed or is truncated")
                done += got
        return out.view(DTYPES[entry.dtype]).reshape(entry.shape)

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.read(name) for name in names}

    def layer(self, arch: "ArchSpec", index: int) -> dict[str, torch.Tensor]:
        """Every tensor of decoder layer `index` (names from the arch record), and nothing else."""
        return self.read_many([t.name for t in arch.tensors() if t.layer == index])

    def iter_layers(self, arch: "ArchSpec") -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(index, tensors) for each decoder layer in order; one layer resident at a time if the caller drops it."""
        for index in range(arch.num_layers):
            yield index, self.layer(arch, index)


@dataclass
class _Shard:
    tmp_path: Path
    file: object
    entries: dict = field(default_factory=dict)  # name -> header entry with data_offsets
    data_bytes: int = 0
    header_json_bytes: int = 2  # "{}"


@dataclass(frozen=True)
class WrittenShards:
    files: list[Path]
    tensor_bytes: dict[str, int]  # name -> stored bytes


class ShardedWriter:
    """Append tensors to safetensors shards in `out_dir`; `close()` names them and writes the index.

    Use as a context manager: on an exception every temporary shard is removed and nothing is renamed.
    Tensors keep the order they were added in; one larger than `max_shard_bytes` gets a shard of its own.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = 5 * 2**30, header_bytes: int = 256 * 1024, metadata: dict | None = None, fsync: bool = True):
        if header_bytes < 64 or header_bytes % 8:
            raise ValueError("header_bytes must be a multiple of 8 and at least 64")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.fsync = fsync  # flush each shard to the disk before it is renamed (off for scratch files)
        self.header_bytes = header_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._metadata_json = len(json.dumps({"__metadata__": self.metadata})) + 1  # + a separating comma
        self._shards: list[_Shard] = []
        self._names: set[str] = set()
        self._closed = False

    def _new_shard(self) -> _Shard:
        tmp = self.out_dir / f".shard-{len(self._shards):05d}.safetensors.tmp-{os.getpid()}"
        f = open(tmp, "wb")
        f.truncate(8 + self.header_bytes)
        f.seek(8 + self.header_bytes)
        shard = _Shard(tmp, f, header_json_bytes=self._metadata_json)
        self._shards.append(shard)
        return shard

    def add(self, name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Append `tensor` (cast to `dtype` if given, a slice at a time, so no whole converted copy exists)."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if name in self._names:
            raise QuantbenchError(f"tensor {name} written twice")
        dtype = dtype or tensor.dtype
        if dtype not in DTYPE_NAMES:
            raise QuantbenchError(f"tensor {name}: dtype {dtype} has no safetensors name")
        flat = tensor.detach().reshape(-1)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        nbytes = flat.numel() * itemsize
        entry = {"dtype": DTYPE_NAMES[dtype], "shape": list(tensor.shape)}
        entry_json = len(json.dumps({name: {**entry, "data_offsets": [2**62, 2**62]}})) - 2 + 1  # an upper bound
        if entry_json + self._metadata_json + 2 > self.header_bytes:
            raise QuantbenchError(f"tensor {name}: its header entry alone exceeds header_bytes={self.header_bytes}")
        shard = self._shards[-1] if self._shards else self._new_shard()
        too_big = shard.entries and shard.data_bytes + nbytes > self.max_shard_bytes
        if too_big or shard.header_json_bytes + entry_json > self.header_bytes:
            self._finish_shard(shard)
            shard = self._new_shard()
        step = max(1, CONVERT_SLICE_BYTES // itemsize)
        for begin in range(0, flat.numel(), step):
            piece = flat[begin : begin + step].to("cpu", dtype).contiguous().view(torch.uint8)
            shard.file.write(memoryview(piece.numpy()))
            # Freed before the next slice is made: the loop variable would otherwise keep this one alive
            # beside it (measured: two 64 MiB slices resident while a bf16 embedding was cast to fp16).
            del piece
        shard.entries[name] = {**entry, "data_offsets": [shard.data_bytes, shard.data_bytes + nbytes]}
        shard.data_bytes += nbytes
        shard.header_json_bytes += entry_json
        self._names.add(name)

    def _finish_shard(self, shard: _Shard) -> None:
        header = json.dumps({"__metadata__": self.metadata, **shard.entries}, separators=(",", ":")).encode()
        if len(header) > self.header_bytes:  # the running size is an upper bound, so this is a bug guard
            raise RuntimeError(f"safetensors header grew to {len(header)} bytes, over the reserved {self.header_bytes}")
        shard.file.seek(0)
        shard.file.write(struct.pack("<Q", self.header_bytes) + header + b" " * (self.header_bytes - len(header)))
        shard.file.flush()
        if self.fsync:
            os.fsync(shard.file.fileno())
        shard.file.close()

    def close(self) -> WrittenShards:
        """Complete the header of every shard, rename them to their final names, write the index."""
        if self._closed:
            raise RuntimeError("writer already closed")
        if not self._shards:
            self._new_shard()  # an empty checkpoint is still one valid file
        self._finish_shard(self._shards[-1])
        count = len(self._shards)
        names = [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        tensor_bytes: dict[str, int] = {}
        weight_map: dict[str, str] = {}
        for shard, final in zip(self._shards, names):
            for name, e in shard.entries.items():
                tensor_bytes[name] = e["data_offsets"][1] - e["data_offsets"][0]
                weight_map[name] = final
        if count > 1:
            index_tmp = self.out_dir / (INDEX_FILE + f".tmp-{os.getpid()}")
            index_tmp.write_text(json.dumps({"metadata": {"total_size": sum(tensor_bytes.values())}, "weight_map": weight_map}, indent=2))
        for shard, final in zip(self._shards, names):
            os.replace(shard.tmp_path, self.out_dir / final)
        if count > 1:
            os.replace(index_tmp, self.out_dir / INDEX_FILE)
        self._closed = True
        return WrittenShards([self.out_dir / n for n in names], tensor_bytes)

    def abort(self) -> None:
        """Remove every temporary shard (nothing was renamed yet)."""
        for shard in self._shards:
            if not shard.file.closed:
                shard.file.close()
            shard.tmp_path.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise

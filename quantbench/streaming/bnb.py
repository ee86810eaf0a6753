"""bitsandbytes from the checkpoint on disk, one tensor at a time, to the artifact transformers writes.

Per linear, exactly what transformers' quantize-on-load does (bitsandbytes 0.50.2, nn.Params4bit and
nn.Int8Params `_quantize`): the weight in the load dtype goes to the device, then
- 4-bit: functional.quantize_4bit(blocksize 64, nested statistics for double quant); stored as
  `weight` (packed codes) and `weight.<key>` for every entry of QuantState.as_dict(packed=True);
- 8-bit: cast to fp16, functional.int8_vectorwise_quant; stored as `weight` (int8), `SCB` (fp32 row
  scales) and `weight_format` (0: row-major), as Linear8bitLt._save_to_state_dict writes them.
Every other tensor is stored in the load dtype. config.json gets the BitsAndBytesConfig, as
save_pretrained writes it, so plain `from_pretrained(OUT)` reloads the artifact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from quantbench.arch import LINEAR, ArchSpec
from quantbench.artifact import write_text_atomic
from quantbench.formats.safetensors_stream import CheckpointReader, ShardedWriter
from quantbench.memory_sampler import MemorySampler
from quantbench.streaming.intgrid import StreamedArtifact

BLOCKSIZE_4BIT = 64  # bitsandbytes' default 4-bit block size (Params4bit.blocksize)


def quantize_bnb_streaming(
    source_dir: Path,
    out_dir: Path,
    bits: int,
    quant_type: str,
    double_quant: bool,
    load_dtype: torch.dtype,
    quantization_config: dict,
    device: str,
    max_shard_bytes: int = 5 * 2**30,
) -> StreamedArtifact:
    """Quantize every decoder linear; `quantization_config` is BitsAndBytesConfig(...).to_dict()."""
    from bitsandbytes import functional as F

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    hf_config = json.loads((source_dir / "config.json").read_text())
    arch = ArchSpec.from_config(hf_config)
    reader = CheckpointReader(source_dir)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with MemorySampler() as sampler, torch.no_grad(), ShardedWriter(out_dir, max_shard_bytes) as writer:
        for t in arch.tensors():
            W = reader.read(t.name)
            if t.role != LINEAR:
                writer.add(t.name, W, load_dtype)
                continue
            module = t.name.removesuffix(".weight")
            w = W.to(device, load_dtype)
            del W
            if bits == 4:
                packed, state = F.quantize_4bit(w.contiguous(), blocksize=BLOCKSIZE_4BIT, compress_statistics=double_quant, quant_type=quant_type, quant_storage=torch.uint8)
                writer.add(t.name, packed)
                for key, value in state.as_dict(packed=True).items():
                    writer.add(f"{t.name}.{key}", value)
                del packed, state  # or they stay on the device while the next linear is quantized
            else:
                CB, SCB, _ = F.int8_vectorwise_quant(w.contiguous().to(torch.float16))
                writer.add(t.name, CB)
                writer.add(f"{module}.SCB", SCB)
                writer.add(f"{module}.weight_format", torch.tensor(0, dtype=torch.uint8))
                del CB, SCB
            del w
        written = writer.close()
    peak_device = None
    if on_cuda:
        torch.cuda.synchronize(device)
        peak_device = torch.cuda.max_memory_allocated(device)
    config = {**hf_config, "quantization_config": quantization_config, "dtype": str(load_dtype).removeprefix("torch.")}
    config.pop("torch_dtype", None)
    write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2, sort_keys=True))
    return StreamedArtifact(written.tensor_bytes, written.files, time.perf_counter() - start, sampler.peaks, peak_device)

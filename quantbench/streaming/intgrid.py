"""Integer-grid methods (RTN, GPTQ, AWQ) from the checkpoint on disk to a compressed-tensors artifact.

Round-to-nearest goes tensor by tensor: read one linear, quantize it on the device, pack it, append
it to the artifact. GPTQ and AWQ go layer by layer (methods/sequential.py does the per-layer work):
capture what decoder layer 0 receives with only the embedding loaded, then for each layer read its
weights from the checkpoint onto the device, quantize it, run it to get the next layer's inputs,
append its packed linears and its (possibly AWQ-rescaled) norms to the artifact, and drop it.

The artifact is tensor for tensor the one the whole-model path writes (tests hold them equal).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from quantbench.arch import LINEAR, ArchSpec
from quantbench.artifact import write_text_atomic
from quantbench.formats.compressed_tensors import encode_linear, quantization_config
from quantbench.formats.safetensors_stream import CheckpointReader, ShardedWriter
from quantbench.memory_sampler import MemoryPeaks, MemorySampler

log = logging.getLogger(__name__)

# RTN is row-independent: quantizing a large linear in slices of rows bounds its fp32 temporaries.
RTN_SLICE_ELEMENTS = 1 << 22


@dataclass
class StreamedArtifact:
    tensor_bytes: dict[str, int]
    files: list[Path]
    seconds: float
    memory: MemoryPeaks  # host: peak RssAnon / RssFile while quantizing
    peak_device_bytes: int | None = None
    errors: dict = field(default_factory=dict)  # calibrated methods: per-linear output errors
    notes: list[str] = field(default_factory=list)


def rtn_by_rows(W: torch.Tensor, config) -> "object":
    """rtn_quantize over slices of rows (identical result, bounded temporaries)."""
    from quantbench.methods.rtn import QuantizedLinear, rtn_quantize

    rows, cols = W.shape
    step = max(1, RTN_SLICE_ELEMENTS // cols)
    parts = [rtn_quantize(W[r : r + step], config) for r in range(0, rows, step)]
    if len(parts) == 1:
        return parts[0]
    return QuantizedLinear(
        codes=torch.cat([p.codes for p in parts]),
        scales=torch.cat([p.scales for p in parts]),
        zeros=torch.cat([p.zeros for p in parts]),
        bits=config.bits,
        group_size=config.group_size,
    )


def _write_linear(writer: ShardedWriter, module: str, q) -> None:
    for suffix, t in encode_linear(q).items():
        writer.add(f"{module}.{suffix}", t)


def _artifact_config(hf_config: dict, bits: int, group_size: int, scale_dtype: torch.dtype, storage_dtype_name: str) -> dict:
    """config.json of the artifact; built before any work (it imports compressed-tensors, 0.13 GB)."""
    config = dict(hf_config)
    config["quantization_config"] = quantization_config(bits, group_size, scale_dtype, ignore=[ArchSpec.from_config(hf_config).family.lm_head])
    config["dtype"] = storage_dtype_name
    config.pop("torch_dtype", None)
    return config


def _write_config(out_dir: Path, config: dict) -> None:
    write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2, sort_keys=True))


def quantize_rtn_streaming(source_dir: Path, out_dir: Path, config, device: str, max_shard_bytes: int = 5 * 2**30) -> StreamedArtifact:
    """RTN (methods.rtn.RTNConfig `config`) every linear, one tensor at a time from the checkpoint."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    hf_config = json.loads((source_dir / "config.json").read_text())
    arch = ArchSpec.from_config(hf_config)
    reader = CheckpointReader(source_dir)
    storage = getattr(torch, config.scale_dtype)
    artifact_config = _artifact_config(hf_config, config.bits, config.group_size, storage, config.scale_dtype)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with MemorySampler() as sampler, torch.no_grad(), ShardedWriter(out_dir, max_shard_bytes) as writer:
        for t in arch.tensors():
            W = reader.read(t.name)
            if t.role == LINEAR:
                q = rtn_by_rows(W.to(device, torch.float32), config)
                del W
                _write_linear(writer, t.name.removesuffix(".weight"), q)  # packed where it was quantized
                del q
            else:
                writer.add(t.name, W, storage)
        written = writer.close()
    _write_config(out_dir, artifact_config)
    peak_device = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return StreamedArtifact(written.tensor_bytes, written.files, time.perf_counter() - start, sampler.peaks, peak_device)


LayerQuantizer = Callable[[torch.nn.Module, "object", str, "object"], None]


def quantize_layers_streaming(
    source_dir: Path,
    out_dir: Path,
    samples: list[list[int]],
    quantize_layer: LayerQuantizer,
    bits: int,
    group_size: int,
    scale_dtype_name: str,
    device: str,
    batch_size: int,
    max_shard_bytes: int = 5 * 2**30,
    trust_remote_code: bool = False,
) -> StreamedArtifact:
    """GPTQ/AWQ layer by layer from the checkpoint: `quantize_layer(layer, inputs, prefix, result)` is
    methods.sequential.gptq_layer or awq_layer with its config bound."""
    from quantbench.methods import sequential
    from quantbench.streaming.skeleton import LazyModel

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    storage = getattr(torch, scale_dtype_name)
    hf_config = json.loads((source_dir / "config.json").read_text())
    artifact_config = _artifact_config(hf_config, bits, group_size, storage, scale_dtype_name)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with MemorySampler() as sampler, torch.no_grad(), ShardedWriter(out_dir, max_shard_bytes) as writer:
        lazy = LazyModel(source_dir, trust_remote_code)
        arch = lazy.arch
        lazy.load_embedding(device)
        inputs = sequential.capture_layer0_inputs(lazy.model, samples, device, batch_size)
        lazy.release_embedding()
        embed = f"{arch.family.embed}.weight"
        writer.add(embed, lazy.reader.read(embed), storage)
        result = sequential.SequentialResult()
        for index in range(arch.num_layers):
            t0 = time.perf_counter()
            prefix = f"{arch.family.layers}.{index}"
            layer = lazy.load_layer(index, device)
            quantize_layer(layer, inputs, prefix, result)
            inputs = sequential.run_layer(layer, inputs)
            state = layer.state_dict()
            for name in lazy.layer_tensor_names(index):
                module = name.removesuffix(".weight")
                if module in result.linears:
                    _write_linear(writer, module, result.linears.pop(module))
                else:  # norms (AWQ may have folded scales into them) and biases
                    writer.add(name, state[name.removeprefix(prefix + ".")], storage)
            del state, layer
            lazy.release_layer(index)
            log.info("layer %d quantized and written in %.1f s", index, time.perf_counter() - t0)
        for t in arch.tensors():
            if t.layer is None and t.name != embed:
                writer.add(t.name, lazy.reader.read(t.name), storage)
        written = writer.close()
    peak_device = None
    if on_cuda:
        torch.cuda.synchronize(device)
        peak_device = torch.cuda.max_memory_allocated(device)
    _write_config(out_dir, artifact_config)
    return StreamedArtifact(
        written.tensor_bytes, written.files, time.perf_counter() - start, sampler.peaks, peak_device, result.errors, result.notes
    )

"""Integer-grid methods (RTN, GPTQ, AWQ) from the checkpoint on disk to a compressed-tensors artifact.

Round-to-nearest goes tensor by tensor (streaming/tensorwise.py's loop, shared with bitsandbytes):
read one linear, quantize it on the device, pack it, append it to the artifact. GPTQ and AWQ go layer
by layer (methods/sequential.py does the per-layer work): capture what decoder layer 0 receives with
only the embedding loaded, then for each layer read its weights from the checkpoint onto the device,
quantize it, run it to get the next layer's inputs, append its packed linears and its (possibly
AWQ-rescaled) norms to the artifact, and drop it.

The artifact is tensor for tensor the one the whole-model path writes (tests hold them equal).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from quantbench.arch import ArchSpec
from quantbench.artifact import write_text_atomic
from quantbench.formats.compressed_tensors import encode_linear, quantization_config
from quantbench.formats.safetensors_stream import ShardedWriter
from quantbench.memory_sampler import MemorySampler, release_free_heap
from quantbench.streaming.tensorwise import StreamedArtifact, quantize_tensorwise

log = logging.getLogger(__name__)

# RTN is row-independent: quantizing a large linear in slices of rows bounds its fp32 temporaries.
RTN_SLICE_ELEMENTS = 1 << 22
PHASE_PACK = "one linear: packing"  # after rounding (quantbench.streaming.budget names the same phase)


def rtn_by_rows(W: torch.Tensor, config) -> "object":
    """rtn_quantize over slices of rows (identical result, bounded temporaries), each slice's result
    written into preallocated outputs (no second copy of the codes to join them)."""
    from quantbench.methods.rtn import SCALE_DTYPES, QuantizedLinear, rtn_quantize

    rows, cols = W.shape
    step = max(1, RTN_SLICE_ELEMENTS // cols)
    if step >= rows:
        return rtn_quantize(W, config)
    groups = -(-cols // config.group_size)
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=W.device)
    scales = torch.empty(rows, groups, dtype=SCALE_DTYPES[config.scale_dtype], device=W.device)
    zeros = torch.empty(rows, groups, dtype=torch.uint8, device=W.device)
    for r in range(0, rows, step):
        part = rtn_quantize(W[r : r + step], config)
        codes[r : r + step], scales[r : r + step], zeros[r : r + step] = part.codes, part.scales, part.zeros
        del part
    return QuantizedLinear(codes=codes, scales=scales, zeros=zeros, bits=config.bits, group_size=config.group_size)


def _artifact_config(hf_config: dict, bits: int, group_size: int, scale_dtype: torch.dtype, storage_dtype_name: str) -> dict:
    """config.json of the artifact; built before any work (it imports compressed-tensors, 0.13 GB)."""
    config = dict(hf_config)
    config["quantization_config"] = quantization_config(bits, group_size, scale_dtype, ignore=[ArchSpec.from_config(hf_config).family.lm_head])
    config["dtype"] = storage_dtype_name
    config.pop("torch_dtype", None)
    return config


def _write_config(out_dir: Path, config: dict) -> None:
    write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2, sort_keys=True))


def _write_linear(writer: ShardedWriter, module: str, q) -> None:
    for suffix, t in encode_linear(q).items():
        writer.add(f"{module}.{suffix}", t)


def quantize_rtn_streaming(source_dir: Path, out_dir: Path, config, device: str, max_shard_bytes: int = 5 * 2**30) -> StreamedArtifact:
    """RTN (methods.rtn.RTNConfig `config`) every linear, one tensor at a time from the checkpoint."""
    hf_config = json.loads((Path(source_dir) / "config.json").read_text())
    storage = getattr(torch, config.scale_dtype)
    artifact_config = _artifact_config(hf_config, config.bits, config.group_size, storage, config.scale_dtype)

    def quantize_linear(name: str, W: torch.Tensor, phase: Callable[[str], None]) -> dict[str, torch.Tensor]:
        # Cast on the device: a blocking host-to-device copy that also changes the dtype converts on
        # the host first (ATen copy_kernel_cuda), a host fp32 copy of the linear that no plan term names.
        q = rtn_by_rows(W.to(device).float(), config)
        phase(PHASE_PACK)
        module = name.removesuffix(".weight")
        return {f"{module}.{suffix}": t for suffix, t in encode_linear(q).items()}  # packed where it was quantized

    return quantize_tensorwise(source_dir, out_dir, artifact_config, quantize_linear, storage, device, max_shard_bytes)


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
    release_free_heap()  # the baseline is then what the process holds, not heap pages it already freed
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
            release_free_heap()
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

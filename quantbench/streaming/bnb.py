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
from pathlib import Path
from typing import Callable

import torch

from quantbench.streaming.tensorwise import StreamedArtifact, quantize_tensorwise

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

    hf_config = json.loads((Path(source_dir) / "config.json").read_text())
    config = {**hf_config, "quantization_config": quantization_config, "dtype": str(load_dtype).removeprefix("torch.")}
    config.pop("torch_dtype", None)

    def quantize_linear(name: str, W: torch.Tensor, phase: Callable[[str], None]) -> dict[str, torch.Tensor]:
        w = W.to(device, load_dtype).contiguous()
        if bits == 4:
            packed, state = F.quantize_4bit(w, blocksize=BLOCKSIZE_4BIT, compress_statistics=double_quant, quant_type=quant_type,
                                            quant_storage=torch.uint8)
            return {name: packed, **{f"{name}.{key}": value for key, value in state.as_dict(packed=True).items()}}
        CB, SCB, _ = F.int8_vectorwise_quant(w.to(torch.float16))
        module = name.removesuffix(".weight")
        return {name: CB, f"{module}.SCB": SCB, f"{module}.weight_format": torch.tensor(0, dtype=torch.uint8)}

    return quantize_tensorwise(source_dir, out_dir, config, quantize_linear, load_dtype, device, max_shard_bytes)

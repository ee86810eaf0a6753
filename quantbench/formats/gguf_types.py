"""llama.cpp's type tables, in one place: ggml tensor types, GGUF file types, stored sizes.

- ggml type ids and block sizes come from the `gguf` package (gguf-py `constants.py`:
  GGMLQuantizationType, GGML_QUANT_SIZES, which mirror ggml.h and ggml-common.h).
- File types (`general.file_type`, llama.h LLAMA_FTYPE_MOSTLY_*) and the ggml type most tensors of
  each get (llama-quant.cpp llama_ftype_get_default_type) are written out here.

Bytes only: which type each tensor gets in a K-quant mixture is a choice, so it lives in
quantbench.methods.gguf_mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError

UNQUANTIZED = ("F32", "F16", "BF16")
# The types quantbench's own GGUF writer produces (formats/gguf_writer.py); the others come from
# llama.cpp's quantizer.
WRITER_TYPES = ("F32", "F16", "BF16", "Q8_0")


@dataclass(frozen=True)
class GGUFFileType:
    name: str  # llama.cpp's spelling, e.g. "Q4_K_M"
    ftype: int  # llama_ftype (llama.h LLAMA_FTYPE_MOSTLY_*), written as general.file_type
    base: str  # the ggml type most tensors get (llama-quant.cpp llama_ftype_get_default_type)
    description: str


# llama.h / llama-quant.cpp. Bits per weight in the descriptions are llama.cpp's for Llama-3-8B-sized
# models (tools/quantize/README.md) and differ on small models, where fallbacks dominate.
FILE_TYPES = {
    ft.name: ft
    for ft in (
        GGUFFileType("F32", 0, "F32", "every tensor in fp32"),
        GGUFFileType("F16", 1, "F16", "2-D tensors in fp16, norms in fp32"),
        GGUFFileType("BF16", 32, "BF16", "2-D tensors in bf16, norms in fp32"),
        GGUFFileType("Q8_0", 7, "Q8_0", "8-bit, one fp16 scale per 32 (8.5 bpw)"),
        GGUFFileType("Q6_K", 18, "Q6_K", "6-bit K-quant (6.56 bpw)"),
        GGUFFileType("Q5_K_M", 17, "Q5_K", "5-bit K-quant, attn_v/ffn_down partly Q6_K"),
        GGUFFileType("Q5_K_S", 16, "Q5_K", "5-bit K-quant"),
        GGUFFileType("Q4_K_M", 15, "Q4_K", "4-bit K-quant, attn_v/ffn_down partly Q6_K (llama.cpp's usual default)"),
        GGUFFileType("Q4_K_S", 14, "Q4_K", "4-bit K-quant, first layers' attn_v/ffn_down Q5_K"),
        GGUFFileType("Q4_0", 2, "Q4_0", "4-bit, one fp16 scale per 32 (4.5 bpw)"),
        GGUFFileType("Q3_K_M", 12, "Q3_K", "3-bit K-quant, attn_v/attn_output/ffn_down at 4-5 bits"),
        GGUFFileType("Q3_K_S", 11, "Q3_K", "3-bit K-quant"),
        GGUFFileType("Q2_K", 10, "Q2_K", "2-bit K-quant, attn_v/attn_output/ffn_down at 3-4 bits"),
        GGUFFileType("IQ4_XS", 30, "IQ4_XS", "4-bit non-linear grid, super-blocks of 256 (4.25 bpw)"),
        GGUFFileType("IQ4_NL", 25, "IQ4_NL", "4-bit non-linear grid, blocks of 32 (4.5 bpw)"),
    )
}
QUANTIZER_TYPES = tuple(n for n in FILE_TYPES if n not in WRITER_TYPES)


def ggml_type(name: str):
    """The gguf.GGMLQuantizationType called `name` ("Q4_K", "F16", ...); its value is the ggml.h id."""
    import gguf

    try:
        return gguf.GGMLQuantizationType[name]
    except KeyError:
        raise QuantbenchError(f"unknown ggml type '{name}'") from None


def block_size(type_name: str) -> int:
    """Elements per block of a ggml type (1 for F32/F16/BF16, 32 for Q8_0, 256 for K-quants)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[ggml_type(type_name)][0]


def ggml_tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Stored bytes of a tensor of `shape` (PyTorch order, last dim = row) in ggml type `type_name`.

    ggml stores rows of ne[0] = shape[-1] elements as whole blocks: (cols / block) * block_bytes per row.
    """
    import gguf

    block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type(type_name)]
    cols = shape[-1]
    if cols % block:
        raise QuantbenchError(f"row width {cols} is not a multiple of the {type_name} block ({block})")
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rows * (cols // block) * block_bytes


def read_tensor_types(path: Path) -> dict[str, tuple[str, int]]:
    """GGUF tensor name -> (ggml type name, stored bytes), read back with the gguf package's reader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}

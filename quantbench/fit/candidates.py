"""Per tensor, the ggml types llama.cpp can store it in, costed as the type llama.cpp really writes.

llama.cpp's quantizer applies a shape fallback AFTER any per-tensor override (llama-quant.cpp
tensor_type_fallback): a row width that is not whole super-blocks turns Q4_K into Q5_0, Q6_K into Q8_0,
IQ4_XS into IQ4_NL, ... So a requested type is never trusted: each candidate is the type after the
fallback, duplicates merged, bytes from the type table (ggml rows of whole blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.errors import QuantbenchError
from quantbench.formats.gguf_types import ggml_tensor_bytes
from quantbench.methods.gguf_mixture import shape_fallback

# What fit may ask llama.cpp for, smallest first. Very-low-bit IQ1/IQ2 types are left out: llama.cpp
# demands an imatrix for them and refuses them for the token embedding; IQ3_S needs none.
DEFAULT_TYPES = ("Q2_K", "Q3_K", "IQ3_S", "IQ4_XS", "Q4_0", "IQ4_NL", "Q4_K", "Q4_1", "Q5_0", "Q5_K", "Q5_1",
                 "Q6_K", "Q8_0", "F16")


@dataclass(frozen=True)
class TensorCandidates:
    gguf_name: str  # e.g. "blk.3.ffn_down.weight"
    shape: tuple[int, ...]  # PyTorch order (rows, cols)
    types: tuple[str, ...]  # distinct written types, smallest first
    bytes: tuple[int, ...]  # stored bytes of each


def quantizable(gguf_name: str, shape: tuple[int, ...]) -> bool:
    """llama-quant.cpp tensor_allows_quantization for dense models: 2-D '...weight' tensors except norms."""
    return len(shape) >= 2 and gguf_name.endswith("weight") and "_norm.weight" not in gguf_name


def written_type(requested: str, cols: int) -> str:
    """The type llama.cpp writes when a tensor with rows of `cols` is overridden to `requested`."""
    if requested in ("F16", "BF16", "F32"):
        return requested
    return shape_fallback(requested, cols)


def tensor_candidates(arch, types: tuple[str, ...] = DEFAULT_TYPES, exclude: tuple[str, ...] = ()) -> list[TensorCandidates]:
    """Every quantizable tensor of `arch` with its distinct written types (after `exclude` is removed).

    `exclude` removes written types (e.g. Q4_1 on a model whose weights sit on a Q4_1 grid).
    """
    out = []
    for t in arch.tensors():
        if t.gguf_name is None or not quantizable(t.gguf_name, t.shape):
            continue
        seen: dict[str, int] = {}
        for requested in types:
            written = written_type(requested, t.shape[-1])
            if written in exclude or written in seen:
                continue
            seen[written] = ggml_tensor_bytes(written, t.shape)
        if not seen:
            raise QuantbenchError(f"{t.gguf_name}: no candidate type is left (all excluded); allow more types")
        ordered = sorted(seen.items(), key=lambda kv: kv[1])
        out.append(TensorCandidates(t.gguf_name, t.shape, tuple(k for k, _ in ordered), tuple(b for _, b in ordered)))
    if not out:
        raise QuantbenchError("this model has no 2-D weight that llama.cpp quantizes")
    if all(set(c.types) <= {"F16", "BF16", "F32"} for c in out):
        raise QuantbenchError(
            "no GGUF quantized type fits this model's tensors: every row width is not a multiple of 32 "
            f"(e.g. {out[0].gguf_name} has rows of {out[0].shape[-1]})"
        )
    return out


def fixed_bytes(arch) -> int:
    """Bytes of the tensors llama.cpp never quantizes (norms, biases: F32)."""
    from quantbench.formats.gguf_writer import writer_storage_type

    total = 0
    for t in arch.tensors():
        if t.gguf_name is not None and not quantizable(t.gguf_name, t.shape):
            total += ggml_tensor_bytes(writer_storage_type(t.gguf_name, t.shape, "F32"), t.shape)
    return total

"""llama.cpp's per-tensor type choice for its file types (the "mixture" of Q4_K_M, Q3_K_S, ...).

This reproduces llama_tensor_get_type (src/llama-quant.cpp, llama-cpp-python 0.3.36's vendored
llama.cpp) for dense Llama-family models, so `quantbench plan` knows the bytes of a GGUF K-quant
before llama.cpp writes it; tests check it against the types llama.cpp actually writes. Block sizes
come from the gguf package's table (gguf-py GGML_QUANT_SIZES), the file type's base type from the
caller (quantbench.formats.gguf_types.FILE_TYPES).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.errors import QuantbenchError

_UNQUANTIZED = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class MixtureContext:
    """What llama_tensor_get_type reads about the model besides the tensor itself."""

    gguf_arch: str  # llama.cpp's architecture name: "llama", "qwen2", "gemma3", ...
    n_layer: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool  # no output.weight in the file: token_embd doubles as the output matrix
    has_imatrix: bool

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv  # llama_hparams::n_gqa, integer division

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B: llama with 80 layers and GQA, qwen2 with 80 layers."""
        if self.n_layer != 80:
            return False
        return self.gguf_arch == "qwen2" or (self.gguf_arch == "llama" and self.n_head != self.n_head_kv)

    @classmethod
    def from_arch(cls, arch, has_imatrix: bool) -> "MixtureContext":
        from quantbench.arch import GGUF_ARCHITECTURES

        gguf_arch = arch.family.gguf_arch
        if gguf_arch is None:
            raise QuantbenchError(
                f"GGUF methods do not support architecture '{arch.model_type}'; supported model_type values: "
                f"{', '.join(GGUF_ARCHITECTURES)}"
            )
        return cls(gguf_arch.lower(), arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.tie_word_embeddings, has_imatrix)


def _block_size(type_name: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def _category(name: str) -> str:
    """llama-quant.cpp tensor_get_category (the categories a dense model has)."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, category in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return category
    return "other"


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp use_more_bits: the first and last eighth of the layers, and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


# Rows that are not whole super-blocks fall back (llama-quant.cpp tensor_type_fallback).
_FALLBACK = {"IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
             "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
             "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def shape_fallback(type_name: str, cols: int) -> str:
    """The type llama.cpp writes for `type_name` on rows of `cols` (after any per-tensor override too)."""
    if cols % _block_size(type_name) == 0:
        return type_name
    fallback = _FALLBACK.get(type_name, type_name)
    if cols % _block_size(fallback):
        return "F16"  # "must use F16 due to unusual shape"
    return fallback


def llama_cpp_tensor_type(
    gguf_name: str, shape: tuple[int, ...], file_type: str, base_type: str, ctx: MixtureContext, layer: int | None, source_type: str = "F32"
) -> str:
    """The ggml type llama.cpp's quantizer gives one tensor (llama_tensor_get_type, dense models).

    `file_type` is llama.cpp's name ("Q4_K_M"), `base_type` the ggml type most tensors of it get
    ("Q4_K"); `shape` is PyTorch order (rows, cols); `layer` the decoder layer. For dense models
    llama.cpp's counters i_attention_wv and i_ffn_down equal the layer index, since it visits tensors
    sorted by layer. `source_type` is the tensor's type in the input file, kept by tensors that are
    never quantized.
    """
    # tensor_allows_quantization: 2-D "...weight" tensors except norms
    if len(shape) < 2 or not gguf_name.endswith("weight") or "_norm.weight" in gguf_name:
        return source_type
    if base_type in _UNQUANTIZED:
        return base_type
    cols = shape[-1]
    category = _category(gguf_name)
    new = base_type
    name = file_type
    n = ctx.n_layer
    i = layer if layer is not None else 0
    if category == "output" or (ctx.tied_embeddings and category == "token_embd"):
        if cols % _block_size(new):
            new = "Q8_0"
        elif new != "Q8_0":
            new = "Q6_K"
    elif category == "token_embd":
        pass  # only the IQ1/IQ2/IQ3_XXS/TQ file types change it
    elif category in ("attn_v", "attn_qkv"):
        if name == "Q2_K":
            new = "Q4_K" if ctx.n_gqa >= 4 else "Q3_K"
        elif name == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
        elif name in ("IQ4_NL", "IQ4_XS") and ctx.n_gqa >= 4:
            new = "Q5_K"
        elif name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif name == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if ctx.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"  # attn_v is 8x smaller than attn_q on 70B: more bits cost little
    elif category == "ffn_down":
        if name == "Q2_K":
            new = "Q3_K"
        elif name == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
        elif name == "Q4_K_M":
            if _use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and name in ("IQ4_NL", "IQ4_XS") and not ctx.has_imatrix:
            new = "Q5_K"
        elif name == "Q5_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif name == "Q4_K_S" and i < n // 8:
            new = "Q5_K"
        elif name in ("Q4_0", "Q5_0") and ctx.has_imatrix and i < n // 8:
            new = "Q4_1" if name == "Q4_0" else "Q5_1"
    elif category == "attn_output":
        if name == "Q2_K":
            new = "Q3_K"
        elif name == "Q3_K_M":
            new = "Q4_K"
        elif name == "Q3_K_L":
            new = "Q5_K"
    return shape_fallback(new, cols)

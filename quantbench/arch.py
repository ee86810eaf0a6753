"""Model-architecture knowledge as data: which tensors a causal LM holds, their shapes and roles.

Every place that needs to know "which linears exist" (planning, GGUF mixtures, layer-by-layer
quantization) reads it from here, never from `if arch == ...` spread through the code.
Shapes follow PyTorch: a linear weight is (rows, cols) = (out_features, in_features).
"""

from __future__ import annotations

from dataclasses import dataclass

# Tensor roles. A method decides per role what it does (e.g. bitsandbytes quantizes "linear" only).
EMBED = "embed"
LINEAR = "linear"
LM_HEAD = "lm_head"
NORM = "norm"

# Architectures whose HF layout (names below) quantbench knows. Llama-family layout.
LLAMA_FAMILY = {"llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gemma", "qwen3"}

# Per decoder layer: (HF module suffix, GGUF base name, kind of shape)
LAYER_LINEARS = (
    ("self_attn.q_proj", "attn_q", "q"),
    ("self_attn.k_proj", "attn_k", "kv"),
    ("self_attn.v_proj", "attn_v", "kv"),
    ("self_attn.o_proj", "attn_output", "o"),
    ("mlp.gate_proj", "ffn_gate", "up"),
    ("mlp.up_proj", "ffn_up", "up"),
    ("mlp.down_proj", "ffn_down", "down"),
)


# Per decoder layer, the 1-D tensors beside the linears: (HF module suffix, GGUF base name, length kind).
# The first entry sits before the attention linears in checkpoint order, the rest after the MLP.
# Gemma-2/3 norm both sides of attention and MLP (HF post_attention_layernorm is GGUF
# post_attention_norm there, while pre_feedforward_layernorm is GGUF ffn_norm); Qwen3 and Gemma-3
# add per-head RMSNorms on q and k (length head_dim). Names from gguf-py's tensor-name map.
_LLAMA_NORMS = (("input_layernorm", "attn_norm", "hidden"), ("post_attention_layernorm", "ffn_norm", "hidden"))
_GEMMA2_NORMS = (
    ("input_layernorm", "attn_norm", "hidden"),
    ("post_attention_layernorm", "post_attention_norm", "hidden"),
    ("pre_feedforward_layernorm", "ffn_norm", "hidden"),
    ("post_feedforward_layernorm", "post_ffw_norm", "hidden"),
)
_QK_NORMS = (("self_attn.q_norm", "attn_q_norm", "head"), ("self_attn.k_norm", "attn_k_norm", "head"))
LAYER_NORMS = {
    "llama": _LLAMA_NORMS,
    "mistral": _LLAMA_NORMS,
    "qwen2": _LLAMA_NORMS,
    "gemma": _LLAMA_NORMS,
    "qwen3": _LLAMA_NORMS + _QK_NORMS,
    "gemma2": _GEMMA2_NORMS,
    "gemma3_text": _GEMMA2_NORMS + _QK_NORMS,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # HF state-dict name, e.g. "model.layers.0.self_attn.q_proj.weight"
    shape: tuple[int, ...]
    role: str  # EMBED, LINEAR, LM_HEAD or NORM
    layer: int | None = None  # decoder layer index for per-layer tensors
    gguf_name: str | None = None  # e.g. "blk.0.attn_q.weight"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "ArchSpec":
        """Build from a HF config.json dict (multimodal configs: their `text_config`)."""
        from quantbench.errors import QuantbenchError

        if "text_config" in config and "hidden_size" not in config:
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
        model_type = config.get("model_type", "")
        if model_type not in LLAMA_FAMILY:
            raise QuantbenchError(
                f"architecture '{model_type}' is not supported; supported model_type values: "
                f"{', '.join(sorted(LLAMA_FAMILY))}"
            )
        heads = config["num_attention_heads"]
        return cls(
            model_type=model_type,
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        )

    def _linear_shape(self, kind: str) -> tuple[int, int]:
        h, q, kv, ffn = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q": (q, h), "kv": (kv, h), "o": (h, q), "up": (ffn, h), "down": (h, ffn)}[kind]

    def tensors(self) -> list[TensorSpec]:
        """Every stored tensor, in checkpoint order (biases of qwen2 q/k/v included)."""
        out = [TensorSpec("model.embed_tokens.weight", (self.vocab_size, self.hidden_size), EMBED, None, "token_embd.weight")]
        norm_length = {"hidden": self.hidden_size, "head": self.head_dim}
        first_norm, *other_norms = LAYER_NORMS[self.model_type]
        for i in range(self.num_layers):
            p = f"model.layers.{i}."

            def norm(hf: str, gg: str, length: str) -> TensorSpec:
                return TensorSpec(p + hf + ".weight", (norm_length[length],), NORM, i, f"blk.{i}.{gg}.weight")

            out.append(norm(*first_norm))
            for hf, gg, kind in LAYER_LINEARS:
                shape = self._linear_shape(kind)
                out.append(TensorSpec(p + hf + ".weight", shape, LINEAR, i, f"blk.{i}.{gg}.weight"))
                if self.attention_bias and kind in ("q", "kv"):
                    out.append(TensorSpec(p + hf + ".bias", (shape[0],), NORM, i, f"blk.{i}.{gg}.bias"))
            out.extend(norm(*entry) for entry in other_norms)
        out.append(TensorSpec("model.norm.weight", (self.hidden_size,), NORM, None, "output_norm.weight"))
        if not self.tie_word_embeddings:
            out.append(TensorSpec("lm_head.weight", (self.vocab_size, self.hidden_size), LM_HEAD, None, "output.weight"))
        return out

    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors())

    def kv_cache_bytes(self, context: int, batch: int = 1, bytes_per_value: int = 2) -> int:
        """K and V for every layer: 2 * layers * kv_heads * head_dim * context * batch values."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * context * batch * bytes_per_value

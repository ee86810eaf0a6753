"""Model-architecture knowledge as data: one record per family, and the tensors a causal LM holds.

Everything that needs to know "which linears exist", where the decoder layers live, which linears
read the same activation, which norms scale by (1 + w) or what llama.cpp calls the architecture
reads it from here (`ArchSpec.family`), never from `if arch == ...` spread through the code:
- methods/sequential.py: `layers`, `input_groups`, `scale_parents`, `no_clip`, `norm_offset`;
- formats/gguf_writer.py: `gguf_arch`, `rotary_permute`, the hyperparameters below;
- plan: the tensors, and the Hessians of a layer (`input_groups`).
Shapes follow PyTorch: a linear weight is (rows, cols) = (out_features, in_features).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantbench.errors import QuantbenchError

# Tensor roles. A method decides per role what it does (e.g. bitsandbytes quantizes "linear" only).
EMBED = "embed"
LINEAR = "linear"
LM_HEAD = "lm_head"
NORM = "norm"

# Per decoder layer: (HF module suffix, GGUF base name, kind of shape), in checkpoint order.
LAYER_LINEARS = (
    ("self_attn.q_proj", "attn_q", "q"),
    ("self_attn.k_proj", "attn_k", "kv"),
    ("self_attn.v_proj", "attn_v", "kv"),
    ("self_attn.o_proj", "attn_output", "o"),
    ("mlp.gate_proj", "ffn_gate", "up"),
    ("mlp.up_proj", "ffn_up", "up"),
    ("mlp.down_proj", "ffn_down", "down"),
)
# The linears of one layer grouped by the activation they read, in forward order (each group shares
# one Hessian), and the op whose output each group reads (AWQ folds 1/s into it; v_proj -> o_proj only
# works when the attention has as many value heads as query heads).
_LLAMA_INPUT_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_LLAMA_SCALE_PARENTS = ("input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj")
# AWQ does not clip q/k: their errors pass through the softmax, which the output loss does not see (llm-awq).
_LLAMA_NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")

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


@dataclass(frozen=True)
class ArchFamily:
    """What quantbench knows about one HF model_type: its module layout and its GGUF conversion."""

    model_type: str
    norms: tuple[tuple[str, str, str], ...]  # per-layer 1-D tensors (see _LLAMA_NORMS)
    norm_offset: bool = False  # RMSNorm scales by (1 + weight) (Gemma): scales cannot be folded as 1/s
    attention_bias: bool = False  # default when the config does not say (Qwen2 has q/k/v biases)
    # llama.cpp's architecture (gguf-py MODEL_ARCH member name) that llama.cpp's converter writes for
    # this model_type and llama-cpp-python 0.3.36 loads (formats/upstream_converter.py checks both).
    gguf_arch: str | None = None
    own_gguf_writer: bool = False  # quantbench's own writer (formats/gguf_writer.py) handles it too
    # Llama/Mistral q/k rows go from HF's rotate-half to llama.cpp's interleaved rotary layout
    # (convert_hf_to_gguf.py LlamaModel.permute); Qwen2 uses NeoX rotary in llama.cpp: no permute.
    rotary_permute: bool = False
    qk_projections: tuple[str, str] = ("self_attn.q_proj", "self_attn.k_proj")  # rows = heads x head_dim
    decoder: str = "model"  # the module that holds embeddings, layers and the final norm
    layers: str = "model.layers"  # the ModuleList of decoder layers
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"  # rotary embedding module (absent in some versions)
    lm_head: str = "lm_head"
    linears: tuple[tuple[str, str, str], ...] = LAYER_LINEARS
    input_groups: tuple[tuple[str, ...], ...] = _LLAMA_INPUT_GROUPS
    scale_parents: tuple[str, ...] = _LLAMA_SCALE_PARENTS
    no_clip: tuple[str, ...] = _LLAMA_NO_CLIP


FAMILIES = {
    f.model_type: f
    for f in (
        ArchFamily("llama", _LLAMA_NORMS, gguf_arch="LLAMA", rotary_permute=True, own_gguf_writer=True),
        # llama.cpp runs Mistral as arch "llama" (convert_hf_to_gguf.py: LlamaModel)
        ArchFamily("mistral", _LLAMA_NORMS, gguf_arch="LLAMA", rotary_permute=True, own_gguf_writer=True),
        ArchFamily("qwen2", _LLAMA_NORMS, attention_bias=True, gguf_arch="QWEN2", own_gguf_writer=True),
        ArchFamily("qwen3", _LLAMA_NORMS + _QK_NORMS, gguf_arch="QWEN3"),
        ArchFamily("gemma", _LLAMA_NORMS, norm_offset=True, gguf_arch="GEMMA"),
        ArchFamily("gemma2", _GEMMA2_NORMS, norm_offset=True, gguf_arch="GEMMA2"),
        ArchFamily("gemma3_text", _GEMMA2_NORMS + _QK_NORMS, norm_offset=True, gguf_arch="GEMMA3"),
    )
}
LLAMA_FAMILY = frozenset(FAMILIES)  # every model_type quantbench knows has the Llama-family layout
GGUF_ARCHITECTURES = tuple(sorted(t for t, f in FAMILIES.items() if f.gguf_arch))
OWN_WRITER_ARCHITECTURES = tuple(sorted(t for t, f in FAMILIES.items() if f.own_gguf_writer))


def text_config(config: dict) -> dict:
    """A multimodal config's text config (with the model_type), else the config itself."""
    if "text_config" in config and "hidden_size" not in config:
        return {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    return config


def rope_parameters(config: dict) -> dict:
    """RoPE settings from a transformers 5 (`rope_parameters`) or 4 (`rope_theta`, `rope_scaling`) config."""
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        rope = dict(config.get("rope_scaling") or {})
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", "default")
    return rope


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
    # Hyperparameters a GGUF file carries besides the shapes.
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    head_dim_in_config: bool = False  # the config sets head_dim explicitly (GGUF then records key/value length)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer "sliding_attention" / "full_attention"
    rope: dict = field(default_factory=dict, compare=False, hash=False)  # rope_parameters(config)

    @classmethod
    def from_config(cls, config: dict) -> "ArchSpec":
        """Build from a HF config.json dict (multimodal configs: their `text_config`)."""
        config = text_config(config)
        model_type = config.get("model_type", "")
        if model_type not in FAMILIES:
            raise QuantbenchError(
                f"architecture '{model_type}' is not supported; supported model_type values: {', '.join(sorted(FAMILIES))}"
            )
        heads = config["num_attention_heads"]
        layer_types = config.get("layer_types")
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
            attention_bias=bool(config.get("attention_bias", FAMILIES[model_type].attention_bias)),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            head_dim_in_config=config.get("head_dim") is not None,
            sliding_window=config.get("sliding_window"),
            layer_types=tuple(layer_types) if layer_types else None,
            rope=rope_parameters(config),
        )

    @property
    def family(self) -> ArchFamily:
        return FAMILIES[self.model_type]

    def linear_shape(self, kind: str) -> tuple[int, int]:
        """(rows, cols) of a linear of LAYER_LINEARS kind "q", "kv", "o", "up" or "down"."""
        h, q, kv, ffn = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q": (q, h), "kv": (kv, h), "o": (h, q), "up": (ffn, h), "down": (h, ffn)}[kind]

    def input_widths(self) -> dict[str, int]:
        """Per group of linears that read one activation (named by its first linear): the width of that input."""
        kind = {hf: k for hf, _, k in self.family.linears}
        return {group[0]: self.linear_shape(kind[group[0]])[1] for group in self.family.input_groups}

    def tensors(self) -> list[TensorSpec]:
        """Every stored tensor, in checkpoint order (biases of qwen2 q/k/v included)."""
        f = self.family
        out = [TensorSpec(f"{f.embed}.weight", (self.vocab_size, self.hidden_size), EMBED, None, "token_embd.weight")]
        norm_length = {"hidden": self.hidden_size, "head": self.head_dim}
        first_norm, *other_norms = f.norms
        for i in range(self.num_layers):
            p = f"{f.layers}.{i}."

            def norm(hf: str, gg: str, length: str) -> TensorSpec:
                return TensorSpec(p + hf + ".weight", (norm_length[length],), NORM, i, f"blk.{i}.{gg}.weight")

            out.append(norm(*first_norm))
            for hf, gg, kind in f.linears:
                shape = self.linear_shape(kind)
                out.append(TensorSpec(p + hf + ".weight", shape, LINEAR, i, f"blk.{i}.{gg}.weight"))
                if self.attention_bias and kind in ("q", "kv"):
                    out.append(TensorSpec(p + hf + ".bias", (shape[0],), NORM, i, f"blk.{i}.{gg}.bias"))
            out.extend(norm(*entry) for entry in other_norms)
        out.append(TensorSpec(f"{f.final_norm}.weight", (self.hidden_size,), NORM, None, "output_norm.weight"))
        if not self.tie_word_embeddings:
            out.append(TensorSpec(f"{f.lm_head}.weight", (self.vocab_size, self.hidden_size), LM_HEAD, None, "output.weight"))
        return out

    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors())

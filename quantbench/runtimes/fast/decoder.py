"""The fast runtime's own decoder: Llama-family layers over packed linears, with a static KV cache.

Covers the architectures in `stored.SUPPORTED_ARCHS` (llama, mistral, qwen2): pre-norm RMSNorm,
rotary embeddings (HF's half-split layout, any static rope type transformers knows), grouped-query
attention, SwiGLU MLP, optional q/k/v biases (qwen2), optional sliding window (mistral), tied or
separate lm_head. Every per-layer fact comes from the arch record and config.json.

The per-token small operations (RMSNorm with the residual add, rotary + KV-cache store, silu * up) are
fused Triton kernels on CUDA (fused.py, each beside its PyTorch spec).

Two paths through the same weights:
- `prefill(ids)`: the prompt at once from an empty cache (SDPA with a causal mask: flash attention on
  CUDA), rows of a batch in chunks so activations stay small; writes K/V into the cache.
- `step()`: one token per sequence at the next position, reading token and position from device
  tensors and writing the argmax back into them, so the whole step can be captured once as a CUDA graph
  and replayed for every new token with no host work.

Shapes: B batch, T tokens, S cache length, H query heads, Hkv key/value heads, G = H / Hkv, D head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quantbench.arch import ArchSpec
from quantbench.runtimes.fast import fused
from quantbench.runtimes.fast.linears import Linear


@dataclass
class Layer:
    attn_norm: torch.Tensor  # (hidden,)
    qkv: list[Linear]  # one fused linear, or [q, k, v]
    o: Linear
    ffn_norm: torch.Tensor
    gate_up: list[Linear]  # one fused linear, or [gate, up]
    down: Linear


def rope_tables(config, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (positions, D/2) in fp32, from transformers' own rope parameter functions (so llama3,
    yarn, linear scaling match the reference exactly); HF applies them to both halves of a head."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = config.rope_parameters
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        D = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float) / D))
        scaling = 1.0
    elif rope_type == "dynamic":
        from quantbench.runtimes.fast.stored import unsupported

        raise unsupported("dynamic rope scaling (its frequencies change with the sequence length)")
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    freqs = torch.arange(positions, dtype=torch.float)[:, None] * inv_freq.float()[None, :]
    return (freqs.cos() * scaling).to(device), (freqs.sin() * scaling).to(device)


class Decoder:
    def __init__(self, arch: ArchSpec, hf_config, embed: torch.Tensor, layers: list[Layer], norm: torch.Tensor,
                 lm_head: Linear | None, dtype: torch.dtype, device: torch.device):
        self.arch, self.dtype, self.device = arch, dtype, device
        self.embed, self.layers, self.norm = embed, layers, norm
        self.lm_head = lm_head  # None: tied to the embedding table
        self.eps = float(getattr(hf_config, "rms_norm_eps", 1e-6))
        window = getattr(hf_config, "sliding_window", None)
        self.window = int(window) if window and getattr(hf_config, "use_sliding_window", True) else None
        self.max_positions = int(getattr(hf_config, "max_position_embeddings", 4096))
        self.cos, self.sin = rope_tables(hf_config, self.max_positions, device)
        self.H, self.Hkv, self.D = arch.num_heads, arch.num_kv_heads, arch.head_dim
        self.cache_k: torch.Tensor | None = None  # (layers, B, Hkv, S, D)
        self.cache_v: torch.Tensor | None = None
        # Decode state on the device: the next token of each row and its position (read by the graph).
        self.token: torch.Tensor | None = None  # (B,) int64
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.step_logits: torch.Tensor | None = None  # (B, vocab) of the last step, compute dtype

    # -- cache -----------------------------------------------------------------------------------------

    def ensure_cache(self, batch: int, length: int) -> bool:
        """A cache for `batch` rows of `length` positions; True when a new one had to be allocated."""
        if self.cache_k is not None and self.cache_k.shape[1] == batch and self.cache_k.shape[3] >= length:
            return False
        self.cache_k = self.cache_v = None
        shape = (len(self.layers), batch, self.Hkv, length, self.D)
        self.cache_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.cache_v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.token = torch.zeros(batch, dtype=torch.long, device=self.device)
        return True

    @property
    def cache_length(self) -> int:
        return 0 if self.cache_k is None else self.cache_k.shape[3]

    def kv_cache_bytes(self) -> int:
        return 0 if self.cache_k is None else 2 * self.cache_k.nbytes

    # -- pieces shared by both paths ---------------------------------------------------------------

    def _project(self, linears: list[Linear], x: torch.Tensor) -> list[torch.Tensor]:
        if len(linears) == 1:
            return [linears[0](x)]
        return [lin(x) for lin in linears]

    def _qkv(self, layer: Layer, h: torch.Tensor, B: int, T: int):
        outs = self._project(layer.qkv, h)
        if len(outs) == 1:
            q, k, v = outs[0].split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], dim=-1)
        else:
            q, k, v = outs
        return q.view(B, T, self.H, self.D), k.view(B, T, self.Hkv, self.D), v.view(B, T, self.Hkv, self.D)

    def _mlp(self, layer: Layer, h: torch.Tensor) -> torch.Tensor:
        """h (rows, hidden) -> down(silu(gate) * up)."""
        outs = self._project(layer.gate_up, h)
        gate, up = outs[0].chunk(2, dim=-1) if len(outs) == 1 else outs
        return layer.down(fused.silu_mul(gate, up))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of normed hidden states h (rows, hidden)."""
        return F.linear(h, self.embed) if self.lm_head is None else self.lm_head(h)

    def _next_norm(self, index: int) -> torch.Tensor:
        return self.layers[index + 1].attn_norm if index + 1 < len(self.layers) else self.norm

    # -- prefill -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, all_logits: bool = False, rows_per_chunk: int | None = None) -> torch.Tensor:
        """ids (B, T) from position 0 into the cache (which must hold B rows). Returns fp32 logits:
        (B, T, vocab) if all_logits else (B, vocab) of the last position; sets the next tokens."""
        B, T = ids.shape
        if T > self.max_positions:
            from quantbench.errors import QuantbenchError

            raise QuantbenchError(f"{T} tokens exceed the model's {self.max_positions} positions; use shorter prompts")
        chunk = rows_per_chunk or max(1, 2048 // T)  # bound activation memory: ~2048 tokens at a time
        outs = []
        for r0 in range(0, B, chunk):
            outs.append(self._prefill_rows(ids[r0 : r0 + chunk], r0, all_logits))
        logits = torch.cat(outs, dim=0)
        last = logits[:, -1] if all_logits else logits
        self.token.copy_(last.argmax(-1))
        self.position.fill_(T)
        return logits

    def _prefill_rows(self, ids: torch.Tensor, row0: int, all_logits: bool) -> torch.Tensor:
        B, T = ids.shape
        hidden = self.embed.shape[1]
        x = F.embedding(ids, self.embed).view(B * T, hidden)  # the residual stream, (rows, hidden)
        cos, sin = self.cos[:T], self.sin[:T]
        mask = None
        if self.window is not None and T > self.window:
            i = torch.arange(T, device=self.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)
        h = fused.rms_norm(x, self.layers[0].attn_norm, self.eps)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, B, T)
            q, k = fused.rope_torch(q, cos, sin), fused.rope_torch(k, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, T, D)
            self.cache_k[index, row0 : row0 + B, :, :T] = k
            self.cache_v[index, row0 : row0 + B, :, :T] = v
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
            x, h = fused.add_rms_norm(x, layer.o(a.transpose(1, 2).reshape(B * T, self.H * self.D)), layer.ffn_norm, self.eps)
            x, h = fused.add_rms_norm(x, self._mlp(layer, h), self._next_norm(index), self.eps)
        h = h.view(B, T, hidden)
        if not all_logits:
            h = h[:, -1]
        return self._head(h).float()

    # -- one decode step (graph-capturable) --------------------------------------------------------

    def step(self) -> None:
        """Next token for every row at `self.position`: reads self.token, writes the argmax back into
        it, advances the position. No host synchronisation, no shapes that depend on values."""
        B = self.token.shape[0]
        S = self.cache_k.shape[3]
        pos = self.position
        x = F.embedding(self.token, self.embed)  # (B, hidden), the residual stream
        j = torch.arange(S, device=self.device)
        visible = j <= pos
        if self.window is not None:
            visible = visible & (pos - j < self.window)
        mask = visible.view(1, 1, 1, S)
        G = self.H // self.Hkv
        h = fused.rms_norm(x, self.layers[0].attn_norm, self.eps)
        for index, layer in enumerate(self.layers):
            outs = self._project(layer.qkv, h)
            if len(outs) == 1:
                q, k, v = outs[0].split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], dim=-1)
            else:
                q, k, v = outs
            q = fused.rope_store(q, k, v, self.cos, self.sin, pos, self.cache_k[index], self.cache_v[index])  # (B, H, D)
            # The G query heads sharing a KV head attend as G "query positions" of that head: no K/V copy.
            a = F.scaled_dot_product_attention(q.view(B, self.Hkv, G, self.D), self.cache_k[index], self.cache_v[index], attn_mask=mask)
            x, h = fused.add_rms_norm(x, layer.o(a.reshape(B, self.H * self.D)), layer.ffn_norm, self.eps)
            x, h = fused.add_rms_norm(x, self._mlp(layer, h), self._next_norm(index), self.eps)
        logits = self._head(h)
        if self.step_logits is None or self.step_logits.shape != logits.shape:
            self.step_logits = torch.empty_like(logits)
        self.step_logits.copy_(logits)
        self.token.copy_(logits.argmax(-1))
        self.position.add_(1)


class GraphedStep:
    """Decoder.step captured once as a CUDA graph for the current cache; replay() runs one step."""

    @torch.inference_mode()
    def __init__(self, decoder: Decoder, warmup: int = 2):
        self.decoder = decoder
        token, position = decoder.token.clone(), decoder.position.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):  # first calls allocate workspaces and compile kernels outside the graph
                decoder.step()
        torch.cuda.current_stream().wait_stream(stream)
        decoder.token.copy_(token)
        decoder.position.copy_(position)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            decoder.step()
        decoder.token.copy_(token)  # capture records without running; restore anyway for safety
        decoder.position.copy_(position)
        self.cache = (decoder.cache_k.data_ptr(), decoder.token.data_ptr())

    def valid_for(self, decoder: Decoder) -> bool:
        return self.cache == (decoder.cache_k.data_ptr(), decoder.token.data_ptr())

    def replay(self) -> None:
        self.graph.replay()

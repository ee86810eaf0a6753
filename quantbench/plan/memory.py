"""Memory beside the weights while a model runs: the activation estimate. (The KV cache is each
runtime's own layout: Runtime.kv_cache_bytes.)"""

from __future__ import annotations

from quantbench.arch import ArchSpec


def kv_cache_bytes(arch: ArchSpec, context: int, batch: int, compute_bytes: int, runtime: str) -> int:
    """K and V of every layer in the named runtime's cache layout (Runtime.kv_cache_bytes)."""
    from quantbench.runtimes import runtime_class

    return runtime_class(runtime).kv_cache_bytes(arch, context, batch, compute_bytes)


def activation_bytes(arch: ArchSpec, context: int, batch: int, bytes_per_value: int) -> int:
    """Estimate of the transient activations of one prefill forward over `context` tokens.

    The widest point of a decoder layer is the MLP: its input and the residual stream (2 x hidden),
    gate, up and act(gate) * up (3 x intermediate), per token; attention through SDPA materializes no
    score matrix. Plus fp32 logits of the last position (generation keeps only those). Not counted:
    the CUDA context and allocator slack (a few hundred MB on a GPU).
    """
    per_token = (2 * arch.hidden_size + 3 * arch.intermediate_size) * bytes_per_value
    return batch * context * per_token + batch * arch.vocab_size * 4



"""The decoder's small per-token operations, fused: each is one Triton kernel on CUDA instead of 5-15
PyTorch kernels, since a batch-1 decode step is ~30 layers of a few microseconds each.

Each op has a plain PyTorch version (the spec; used on a CPU and in tests) and a Triton version that
rounds exactly where the spec does:

- rms_norm(x, w):           HF's RMSNorm: x in fp32, x * rsqrt(mean(x^2) + eps), rounded to x's dtype,
                            times w (the product rounded once more, as a bf16 x bf16 multiply does).
- add_rms_norm(x, d, w):    x + d (rounded to x's dtype, the residual stream), then rms_norm of it;
                            returns both.
- rope_store(q, k, v, ...): rotary embedding of q and k at one position per call (HF's half-split layout,
                            computed in fp32 from fp32 cos/sin, rounded once), k and v written into the
                            layer's KV cache at that position; returns the rotated q.
- silu_mul(g, u):           silu(g) rounded to g's dtype, times u (rounded): F.silu(g) * u.
"""

from __future__ import annotations

import torch

try:  # Triton is present wherever CUDA PyTorch is; a CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


# ---------------------------------------------------------------------------------------------------
# The spec (PyTorch)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def add_rms_norm_torch(x, delta, weight, eps):
    x = x + delta
    return x, rms_norm_torch(x, weight, eps)


def rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, D); cos/sin (T, D/2) fp32."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rope_store_torch(q, k, v, cos_table, sin_table, position, cache_k, cache_v):
    """q (B, H, D), k/v (B, Hkv, D) of one new token per row at `position` (a (1,) device tensor);
    cache_k/cache_v (B, Hkv, S, D). Returns rotated q (B, H, D)."""
    cos, sin = cos_table.index_select(0, position), sin_table.index_select(0, position)  # (1, D/2)
    q = rope_torch(q[:, None], cos, sin)[:, 0]
    k = rope_torch(k[:, None], cos, sin)[:, 0]
    cache_k.index_copy_(2, position, k[:, :, None])
    cache_v.index_copy_(2, position, v[:, :, None])
    return q


def silu_mul_torch(gate, up):
    return torch.nn.functional.silu(gate) * up


# ---------------------------------------------------------------------------------------------------
# Triton

if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, n, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * n + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # the residual stream, rounded like x + d
            tl.store(sum_ptr + row * n + cols, x, mask=mask)
        x32 = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / n + eps)
        normed = (x32 * rstd).to(x.dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, (w * normed).to(x.dtype), mask=mask)

    @triton.jit
    def _rope_store_kernel(q_ptr, k_ptr, v_ptr, q_stride, kv_stride, cos_ptr, sin_ptr, pos_ptr, q_out_ptr,
                           ck_ptr, cv_ptr, S, H: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr):
        b = tl.program_id(0)
        head = tl.program_id(1)  # 0..H-1: a query head; H..H+HKV-1: a key/value head
        pos = tl.load(pos_ptr)
        i = tl.arange(0, HALF)
        c = tl.load(cos_ptr + pos * HALF + i)
        s = tl.load(sin_ptr + pos * HALF + i)
        if head < H:
            src = q_ptr + b * q_stride + head * 2 * HALF
        else:
            src = k_ptr + b * kv_stride + (head - H) * 2 * HALF
        x1 = tl.load(src + i)
        x2 = tl.load(src + HALF + i)
        dtype = x1.dtype
        x1 = x1.to(tl.float32)
        x2 = x2.to(tl.float32)
        r1 = (x1 * c - x2 * s).to(dtype)
        r2 = (x2 * c + x1 * s).to(dtype)
        if head < H:
            dst = q_out_ptr + (b * H + head) * 2 * HALF
            tl.store(dst + i, r1)
            tl.store(dst + HALF + i, r2)
        else:
            kv_head = head - H
            slot = ((b * HKV + kv_head) * S + pos) * 2 * HALF
            tl.store(ck_ptr + slot + i, r1)
            tl.store(ck_ptr + slot + HALF + i, r2)
            vsrc = v_ptr + b * kv_stride + kv_head * 2 * HALF
            tl.store(cv_ptr + slot + i, tl.load(vsrc + i))
            tl.store(cv_ptr + slot + HALF + i, tl.load(vsrc + HALF + i))

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, g_stride, u_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n
        g = tl.load(g_ptr + row * g_stride + cols, mask=mask, other=0.0)
        u = tl.load(u_ptr + row * u_stride + cols, mask=mask, other=0.0)
        g32 = g.to(tl.float32)
        silu = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype)
        tl.store(out_ptr + row * n + cols, (silu.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (rows, n) contiguous."""
    if not _use_triton(x):
        return rms_norm_torch(x, weight, eps)
    out = torch.empty_like(x)
    n = x.shape[-1]
    _rms_norm_kernel[(x.numel() // n,)](x, x, weight, x, out, n, eps, HAS_DELTA=False, BLOCK=triton.next_power_of_2(n))
    return out


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)); x, delta (rows, n) contiguous."""
    if not _use_triton(x):
        return add_rms_norm_torch(x, delta, weight, eps)
    total, out = torch.empty_like(x), torch.empty_like(x)
    n = x.shape[-1]
    _rms_norm_kernel[(x.numel() // n,)](x, delta.contiguous(), weight, total, out, n, eps, HAS_DELTA=True,
                                        BLOCK=triton.next_power_of_2(n))
    return total, out


def rope_store(q, k, v, cos_table, sin_table, position, cache_k, cache_v) -> torch.Tensor:
    """See rope_store_torch. q (B, H*D), k/v (B, Hkv*D) may be column slices of one fused output."""
    B, D = cache_k.shape[0], cache_k.shape[-1]
    H, Hkv = q.shape[-1] // D, cache_k.shape[1]
    if not _use_triton(q):
        return rope_store_torch(q.reshape(B, H, D), k.reshape(B, Hkv, D), v.reshape(B, Hkv, D), cos_table, sin_table,
                                position, cache_k, cache_v)
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and k.stride(0) == v.stride(0)
    q_out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    _rope_store_kernel[(B, H + Hkv)](q, k, v, q.stride(0), k.stride(0), cos_table, sin_table, position, q_out,
                                     cache_k, cache_v, cache_k.shape[2], H=H, HKV=Hkv, HALF=D // 2)
    return q_out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up (rows, n), possibly column slices of one fused output."""
    if not _use_triton(gate):
        return silu_mul_torch(gate, up)
    rows, n = gate.shape
    out = torch.empty(rows, n, dtype=gate.dtype, device=gate.device)
    BLOCK = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, BLOCK))](gate, up, out, n, gate.stride(0), up.stride(0), BLOCK=BLOCK)
    return out

"""The fast runtime's fused Triton ops (runtimes/fast/fused.py) against their PyTorch spec.

Run through Triton's interpreter on this CPU (TRITON_INTERPRET=1 in a child process, so the setting
cannot leak into other tests): fp32 results must be identical. In bf16 only closeness is checked (four
bf16 epsilons relative): Triton's interpreter converts fp32 to bf16 by truncation (measured: it matches
truncation on 1000 of 1000 values, round-to-nearest-even on 465), where the GPU rounds to nearest, so
bit-exact bf16 rounding can only be judged on the GPU (tests/test_cuda_fast.py compares whole logits)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

CHECK = r"""
import torch
from quantbench.runtimes.fast import fused
fused._use_triton = lambda x: True  # the interpreter runs the kernels on CPU tensors
torch.manual_seed(0)

def ulps(a, b, dtype):
    a, b = a.float(), b.float()
    if dtype == torch.float32:
        return float((a - b).abs().max())
    ulp = torch.finfo(dtype).eps * b.abs().clamp(min=torch.finfo(dtype).tiny)
    return float(((a - b).abs() / ulp).max())

worst = {}
for dtype in (torch.float32, torch.bfloat16):
    x, d, w = torch.randn(3, 96).to(dtype), torch.randn(3, 96).to(dtype), torch.randn(96).to(dtype)
    worst["rms", dtype] = ulps(fused.rms_norm(x, w, 1e-5), fused.rms_norm_torch(x, w, 1e-5), dtype)
    (s1, n1), (s2, n2) = fused.add_rms_norm(x, d, w, 1e-5), fused.add_rms_norm_torch(x, d, w, 1e-5)
    worst["add", dtype] = max(ulps(s1, s2, dtype), ulps(n1, n2, dtype))
    gate, up = torch.randn(2, 100).to(dtype).chunk(2, -1)
    worst["silu", dtype] = ulps(fused.silu_mul(gate, up), fused.silu_mul_torch(gate, up), dtype)
    B, H, Hkv, D, S = 2, 4, 2, 16, 10
    q, k, v = torch.randn(B, (H + 2 * Hkv) * D).to(dtype).split([H * D, Hkv * D, Hkv * D], -1)
    cos, sin = torch.randn(20, D // 2), torch.randn(20, D // 2)
    pos = torch.tensor([7])
    ck1, cv1 = torch.zeros(B, Hkv, S, D, dtype=dtype), torch.zeros(B, Hkv, S, D, dtype=dtype)
    ck2, cv2 = ck1.clone(), cv1.clone()
    r1 = fused.rope_store(q, k, v, cos, sin, pos, ck1, cv1)
    r2 = fused.rope_store_torch(q.reshape(B, H, D), k.reshape(B, Hkv, D), v.reshape(B, Hkv, D), cos, sin, pos, ck2, cv2)
    worst["rope", dtype] = max(ulps(r1, r2, dtype), ulps(ck1[:, :, 7], ck2[:, :, 7], dtype))
    assert torch.equal(cv1, cv2) and torch.equal(ck1[:, :, :7], ck2[:, :, :7]), "cache written outside its slot"
for (name, dtype), err in worst.items():
    limit = 0.0 if dtype == torch.float32 else 4.0
    assert err <= limit + 1e-9 or (dtype == torch.float32 and err < 1e-6), (name, dtype, err)
print("ok", worst)
"""


def test_fused_ops_match_their_spec():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]

"""What llama.cpp's CPU matmul adds on top of the weights' error: it rounds the ACTIVATIONS too.

ggml-cpu multiplies a weight of type T by its input first converted to T's vec_dot type
(type_traits_cpu[T].vec_dot_type):
- Q8_K (blocks of 256, fp32 scale = signed max / -127) for the K-quants and the IQ types;
- Q8_0 (blocks of 32, fp16 scale = absmax / 127) for Q4_0, Q5_0, Q8_0 and IQ4_NL;
- Q8_1 for Q4_1 and Q5_1: it rounds exactly as Q8_0 (it also stores each block's sum);
- F16 for F16 weights.
So a file whose weights are lossless still differs from the reference (measured: 0.0035 mean KLD on
the default model, 0.006 on Gemma-3-270m), and the share depends on the type: fit measures it directly
per (tensor, activation type): that tensor's input alone rounded in the fp32 model, mean KLD against
the fp32 model on the same direct windows as the weight measurements. A token embedding read by row
lookup (get_rows) has none; a tied one is also the output matmul, and is costed there.
This is the CPU backend; CUDA's quantized kernels round activations to Q8_1 for every type.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from quantbench.errors import QuantbenchError
from quantbench.fit.candidates import TensorCandidates

ACTIVATION_TYPE = {
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K", "IQ3_S": "Q8_K", "IQ4_XS": "Q8_K",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "IQ4_NL": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "F16": "F16", "BF16": "BF16", "F32": "F32",
}
ROUNDS_AS = {"Q8_1": "Q8_0"}  # the same values; measured once
ACTIVATIONS_VERSION = 1


def activation_type(weight_type: str) -> str:
    if weight_type not in ACTIVATION_TYPE:
        raise QuantbenchError(f"{weight_type}: quantbench does not know which activation type llama.cpp pairs with it")
    return ACTIVATION_TYPE[weight_type]


def round_activations(x, kind: str):
    """x as llama.cpp's CPU backend rounds it for a matmul with `kind` activations (along the last axis)."""
    import torch

    kind = ROUNDS_AS.get(kind, kind)
    if kind == "F32":
        return x
    if kind in ("F16", "BF16"):
        return x.to(torch.float16 if kind == "F16" else torch.bfloat16).to(x.dtype)
    block = {"Q8_0": 32, "Q8_K": 256}[kind]
    if x.shape[-1] % block:
        raise QuantbenchError(f"rows of {x.shape[-1]} are not whole {kind} blocks of {block}")
    b = x.float().reshape(*x.shape[:-1], -1, block)
    if kind == "Q8_0":  # quantize_row_q8_0_ref: d = amax/127, q = round(x/d), d stored as fp16
        d = b.abs().amax(-1, keepdim=True) / 127
        inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
        q = torch.round(b * inv)
        y = q * d.half().float()
    else:  # quantize_row_q8_K_ref: the signed value of largest magnitude maps to -127, scale in fp32
        idx = b.abs().argmax(-1, keepdim=True)
        top = b.gather(-1, idx)
        iscale = torch.where(top != 0, -127 / top, torch.zeros_like(top))
        q = torch.clamp(torch.round(b * iscale), max=127)
        y = q * torch.where(top != 0, 1 / iscale, torch.zeros_like(top))
    return y.reshape(x.shape).to(x.dtype)


def _consumers(model, params: dict, hf_name: str):
    """The Linear layers that multiply by this parameter (a tied embedding: the output head)."""
    import torch

    p = params[hf_name]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight is p]
    if not linears and not any(isinstance(m, torch.nn.Embedding) and m.weight is p for m in model.modules()):
        raise QuantbenchError(f"{hf_name}: no Linear or Embedding layer of the transformers model uses it")
    return linears


def measure_activation_costs(run, candidates: list[TensorCandidates], reference: list,
                             progress: Callable[[str], None] = lambda m: None) -> dict[str, dict[str, float]]:
    """gguf tensor name -> activation type -> mean KLD with only that tensor's input rounded."""
    import torch

    from quantbench.eval.divergence import token_kld

    jobs = []
    for c in candidates:
        kinds = sorted({ROUNDS_AS.get(activation_type(t), activation_type(t)) for t in c.types} - {"F32"})
        jobs += [(c.gguf_name, kind) for kind in kinds]
    out: dict[str, dict[str, float]] = {c.gguf_name: {"F32": 0.0} for c in candidates}
    started = time.perf_counter()
    for k, (name, kind) in enumerate(jobs):
        if k % 20 == 0:
            eta = (time.perf_counter() - started) / k * (len(jobs) - k) if k else 0.0
            progress(f"activation rounding: {k}/{len(jobs)} (tensor, type) measured" + (f", about {eta / 60:.1f} min left" if k else ""))
        linears = _consumers(run.model, run.params, run.hf_name[name])
        if not linears:  # only looked up by row: llama.cpp dequantizes those rows exactly
            out[name][kind] = 0.0
            continue
        hooks = [layer.register_forward_pre_hook(lambda _, args, kind=kind: (round_activations(args[0], kind), *args[1:]))
                 for layer in linears]
        try:
            with torch.no_grad():
                klds = [token_kld(ref, torch.log_softmax(run.model(torch.tensor([w], device=run.device), use_cache=False)
                                                         .logits[0].float(), -1)).double()
                        for w, ref in zip(run.direct_windows, reference)]
        finally:
            for h in hooks:
                h.remove()
        out[name][kind] = float(torch.cat(klds).mean())
    for per in out.values():
        for alias, same in ROUNDS_AS.items():
            if same in per:
                per[alias] = per[same]
    return out


def with_activation_costs(cost: dict[str, dict[str, float]], activation: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each (tensor, type)'s weight cost plus the cost of the activations llama.cpp pairs with that type."""
    return {name: {t: v + activation[name][activation_type(t)] for t, v in per.items()} for name, per in cost.items()}


def cached_activation_costs(model_dir: Path, arch, candidates: list[TensorCandidates], calibration: list[list[int]],
                            settings, cache_path: Path, device: str = "cpu",
                            progress: Callable[[str], None] = lambda m: None) -> dict[str, dict[str, float]]:
    """measure_activation_costs through a file cache (written to a temporary name, then renamed)."""
    from quantbench.fit.sensitivity import SensitivityRun

    if cache_path.is_file():
        return json.loads(cache_path.read_text())
    run = SensitivityRun(model_dir, arch, calibration, settings, device, progress)
    result = measure_activation_costs(run, candidates, run.reference(), progress)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, cache_path)
    return result

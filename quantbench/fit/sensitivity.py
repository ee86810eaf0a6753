"""What each (tensor, ggml type) costs: the increase in mean KL divergence from the full-precision model.

Measured on CALIBRATION windows only (the evaluation split is never read here).

1. For every candidate type, llama.cpp's own quantizer writes the whole model in that type (every
   tensor pinned to it, quantbench's importance matrix), and the gguf package's dequantizer gives
   Q(W) for every tensor: exactly the values the final artifact will hold for that choice.
2. Second-order estimate: KL's Hessian at the reference is the Fisher, so
       cost(tensor, type) ~ 1/2 sum_ij Fbar_ij (W_ij - Q(W)_ij)^2
   with diag(Fbar) from calibration windows (methods/fisher.py).
3. A sample of (tensor, type) pairs is measured DIRECTLY: that tensor alone replaced by Q(W) in the fp32
   model, mean KLD against the fp32 model on calibration windows. The estimate is scaled by the median
   ratio direct / estimate, and the rank correlation (Spearman) of estimate vs direct is reported.

The result is cached on disk, keyed by model, calibration tokens, importance matrix, types and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from quantbench.errors import QuantbenchError
from quantbench.fit.candidates import TensorCandidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensitivitySettings:
    fisher_sequences: int = 4  # calibration windows for the Fisher diagonal (one backward pass each) ...
    fisher_tokens: int = 512  # ... each cut to its first this many tokens
    direct_tensors: int = 8  # tensors measured directly ...
    direct_levels: int = 2  # ... each at this many of its types (its smallest, and one in the middle)
    direct_windows: int = 1  # calibration windows per direct measurement ...
    direct_tokens: int = 256  # ... each cut to its first this many tokens
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.fisher_sequences < 1 or self.direct_windows < 1 or self.direct_tokens < 2 or self.fisher_tokens < 2:
            raise QuantbenchError("the sensitivity needs at least one Fisher sequence and one direct window")
        if self.direct_tensors < 3 or self.direct_levels < 1:
            raise QuantbenchError("direct_tensors must be >= 3 (a rank correlation needs points) and direct_levels >= 1")


@dataclass
class Sensitivity:
    cost: dict[str, dict[str, float]]  # gguf tensor name -> written type -> predicted mean-KLD increase
    kv_cost: dict[str, float]  # KV-cache type -> mean KLD of llama.cpp with lossless weights and that cache
    estimate: dict[str, dict[str, float]]  # the raw second-order estimates (before scaling)
    direct: list[dict]  # [{"tensor", "type", "direct", "estimate"}]
    scale: float  # cost = scale * estimate
    spearman: float  # estimate vs direct, all sampled pairs
    spearman_within_type: float | None  # mean over types with >= 3 sampled tensors
    settings: dict
    tokens: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Sensitivity":
        return cls(**data)


def _bits_per_weight(type_name: str) -> float:
    import gguf

    block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * block_bytes / block


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    if len(a) != len(b) or len(a) < 3:
        raise QuantbenchError("a rank correlation needs at least 3 pairs")

    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = np.array(ranks(a)), np.array(ranks(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def choose_direct_pairs(candidates: list[TensorCandidates], settings: SensitivitySettings) -> list[tuple[str, str]]:
    """Which (tensor, type) pairs to measure directly: `direct_tensors` tensors spread over the roles,
    each at its smallest written type and evenly spaced larger ones (never its largest, near-lossless)."""
    rng = random.Random(settings.seed)
    by_role: dict[str, list[TensorCandidates]] = {}
    for c in candidates:
        role = c.gguf_name.split(".")[-2] if c.gguf_name.startswith("blk.") else c.gguf_name
        by_role.setdefault(role, []).append(c)
    for group in by_role.values():
        rng.shuffle(group)
    picked: list[TensorCandidates] = []
    roles = sorted(by_role, key=lambda r: (-sum(math.prod(c.shape) for c in by_role[r]), r))  # largest roles first
    while len(picked) < min(settings.direct_tensors, len(candidates)):
        for role in roles:
            if by_role[role] and len(picked) < settings.direct_tensors:
                picked.append(by_role[role].pop())
    pairs = []
    for c in picked:
        usable = [t for t in c.types if t not in ("F16", "BF16", "F32")] or list(c.types)
        lower_half = usable[: max(1, (len(usable) + 1) // 2)]  # smallest types first: where the choices hurt
        step = max(1, len(lower_half) // settings.direct_levels)
        pairs += [(c.gguf_name, t) for t in lower_half[::step][: settings.direct_levels]]
    return pairs


class SensitivityRun:
    """Holds the fp32 model, its Fisher diagonal and reference log-probs while the types are measured."""

    def __init__(self, model_dir: Path, arch, calibration: list[list[int]], settings: SensitivitySettings,
                 device: str = "cpu", progress: Callable[[str], None] = lambda m: None):
        import torch
        from transformers import AutoModelForCausalLM

        self.arch = arch
        self.settings = settings
        self.progress = progress
        need = settings.fisher_sequences + settings.direct_windows
        if len(calibration) < 2:
            raise QuantbenchError("fit needs at least 2 calibration windows; give a longer --text")
        # Fisher windows first, direct windows from the end; they overlap only when the text is short
        self.fisher_windows = [w[: settings.fisher_tokens] for w in calibration[: settings.fisher_sequences]]
        self.direct_windows = [w[: settings.direct_tokens] for w in calibration[-settings.direct_windows :]]
        if len(calibration) < need:
            log.warning("only %d calibration windows: the Fisher and the direct measurements share some", len(calibration))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        self.params = dict(self.model.named_parameters())
        self.hf_name = {t.gguf_name: t.name for t in arch.tensors() if t.gguf_name}
        self.device = device

    def fisher(self, gguf_names: list[str]) -> dict[str, np.ndarray]:
        """diag(Fbar) of these tensors, in GGUF row order (q/k rows permuted as the writer does)."""
        from quantbench.formats.gguf_writer import permute_for_rotary, rotary_permute_heads
        from quantbench.methods.fisher import FisherConfig, fisher_diagonal

        missing = [n for n in gguf_names if self.hf_name.get(n) not in self.params]
        if missing:
            raise QuantbenchError(f"{missing[0]} has no parameter in the transformers model")
        names = sorted({self.hf_name[n] for n in gguf_names})
        started = time.perf_counter()

        def tick(done, total):
            eta = (time.perf_counter() - started) / done * (total - done)
            self.progress(f"Fisher diagonal: {done}/{total} calibration windows, about {eta / 60:.1f} min left")

        result = fisher_diagonal(self.model, self.fisher_windows, names, FisherConfig(seed=self.settings.seed), tick)
        out = {}
        for gguf_name in gguf_names:
            hf = self.hf_name[gguf_name]
            if hf in result.values:
                F = result.values[hf].numpy()
                heads = rotary_permute_heads(self.arch, hf)
                out[gguf_name] = permute_for_rotary(F, heads) if heads else F
        return out

    def check_same_weights(self, W: dict[str, np.ndarray]) -> None:
        """The lossless intermediate must hold exactly the model's parameters (in GGUF row order): the
        estimates compare Q(W) with W, and the direct measurements put Q(W) back into the model. A writer
        that transforms a chosen tensor (a scale, another permutation) would make both silently wrong."""
        from quantbench.formats.gguf_writer import permute_for_rotary, rotary_permute_heads

        for gguf_name, W_gguf in W.items():
            hf = self.hf_name[gguf_name]
            P = self.params[hf].detach().cpu().float().numpy()
            heads = rotary_permute_heads(self.arch, hf)
            if not np.array_equal(permute_for_rotary(P, heads) if heads else P, W_gguf):
                raise QuantbenchError(
                    f"{gguf_name} in the lossless GGUF differs from the model's {hf}: this architecture's GGUF "
                    "writer transforms it, and fit does not know how to map it back"
                )

    def reference(self) -> list:
        import torch

        with torch.no_grad():
            return [torch.log_softmax(self.model(torch.tensor([w], device=self.device), use_cache=False).logits[0].float(), -1)
                    for w in self.direct_windows]

    def direct_kld(self, gguf_name: str, Q_gguf: np.ndarray, reference: list) -> float:
        """Mean KLD on the direct windows with this one tensor replaced by Q (given in GGUF row order)."""
        import torch

        from quantbench.eval.divergence import token_kld
        from quantbench.formats.gguf_writer import rotary_permute_heads, unpermute_for_rotary

        hf = self.hf_name[gguf_name]
        heads = rotary_permute_heads(self.arch, hf)
        Q = unpermute_for_rotary(Q_gguf, heads) if heads else Q_gguf
        p = self.params[hf]
        saved = p.detach().clone()
        try:
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(Q)).to(p.dtype))
                klds = []
                for w, ref in zip(self.direct_windows, reference):
                    lp = torch.log_softmax(self.model(torch.tensor([w], device=self.device), use_cache=False).logits[0].float(), -1)
                    klds.append(token_kld(ref, lp).double())
        finally:
            with torch.no_grad():
                p.copy_(saved)
        return float(torch.cat(klds).mean())


def kv_cache_costs(intermediate: Path, windows: list[list[int]], reference: list, kv_types: tuple[str, ...]) -> dict[str, float]:
    """Mean KLD of llama.cpp running the lossless intermediate with each KV-cache type (flash attention on)
    against the fp32 reference, on the direct windows: the runtime's own share of the error."""
    from quantbench.eval.divergence import token_kld
    from quantbench.runtimes.llamacpp import LlamaCppRuntime

    out = {}
    for kv in kv_types:
        runtime = LlamaCppRuntime(intermediate, kv_cache_type=kv, flash_attention="on")
        try:
            klds = [token_kld(ref, torch_log_softmax(runtime.logits(w))).double() for w, ref in zip(windows, reference)]
        finally:
            runtime.close()
        out[kv] = float(np.mean([float(k.mean()) for k in klds]))
    return out


def torch_log_softmax(logits):
    import torch

    return torch.log_softmax(logits.float(), -1)


def read_quantized(path: Path):
    """GGUF tensor name -> (written type, stored bytes, dequantized float32 (rows, cols)) for a quantized file."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        yield t.name, t.tensor_type.name, int(t.n_bytes), lambda t=t: np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def measure_sensitivity(model_dir: Path, intermediate: Path, arch, candidates: list[TensorCandidates],
                        imatrix: dict[str, np.ndarray], calibration: list[list[int]], settings: SensitivitySettings,
                        kv_types: tuple[str, ...], cache_path: Path | None = None, device: str = "cpu",
                        progress: Callable[[str], None] = lambda m: None) -> Sensitivity:
    """The cost table for every candidate (cached at `cache_path` when given)."""
    from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp

    if cache_path is not None and cache_path.is_file():
        return Sensitivity.from_json(json.loads(cache_path.read_text()))
    started = time.perf_counter()
    run = SensitivityRun(model_dir, arch, calibration, settings, device, progress)
    F = run.fisher([c.gguf_name for c in candidates])
    progress("reference log-probabilities on the direct-measurement windows")
    reference = run.reference()
    progress(f"KV-cache types {', '.join(kv_types)}: llama.cpp with lossless weights")
    kv_cost = kv_cache_costs(intermediate, run.direct_windows, reference, kv_types)
    W = {name: dequant() for name, _, _, dequant in read_quantized(intermediate) if name in F}
    run.check_same_weights(W)
    direct_pairs = set(choose_direct_pairs(candidates, settings))
    by_name = {c.gguf_name: c for c in candidates}
    types = sorted({t for c in candidates for t in c.types}, key=_bits_per_weight)
    estimate: dict[str, dict[str, float]] = {c.gguf_name: {} for c in candidates}
    direct = []
    types_started = time.perf_counter()
    for k, type_name in enumerate(types):
        elapsed = time.perf_counter() - types_started
        progress(f"type {k + 1}/{len(types)} {type_name}: quantizing with llama.cpp"
                 + (f" (about {elapsed / k * (len(types) - k) / 60:.1f} min left)" if k else ""))
        wanted = {c.gguf_name: type_name for c in candidates if type_name in c.types}
        with tempfile.TemporaryDirectory(prefix="quantbench-fit-") as tmp:
            out = Path(tmp) / f"{type_name}.gguf"
            quantize_with_llama_cpp(intermediate, out, "Q8_0", imatrix, tensor_types=wanted)
            for name, written, nbytes, dequant in read_quantized(out):
                if name not in wanted:
                    continue
                c = by_name[name]
                if written != type_name or nbytes != c.bytes[c.types.index(type_name)]:
                    raise QuantbenchError(
                        f"{name}: asked llama.cpp for {type_name} ({c.bytes[c.types.index(type_name)]} B), it wrote "
                        f"{written} ({nbytes} B): quantbench's type table disagrees with this llama.cpp build"
                    )
                Q = dequant()
                estimate[name][type_name] = 0.5 * float((F[name].astype(np.float64) * (W[name] - Q).astype(np.float64) ** 2).sum())
                if (name, type_name) in direct_pairs:
                    progress(f"type {k + 1}/{len(types)} {type_name}: direct measurement of {name}")
                    direct.append({"tensor": name, "type": type_name, "direct": run.direct_kld(name, Q, reference),
                                   "estimate": estimate[name][type_name]})
    missing = [(c.gguf_name, t) for c in candidates for t in c.types if t not in estimate[c.gguf_name]]
    if missing:
        raise QuantbenchError(f"no measurement for {missing[0][0]} as {missing[0][1]}")
    ratios = [d["direct"] / d["estimate"] for d in direct if d["estimate"] > 0 and d["direct"] > 0]
    if not ratios:
        raise QuantbenchError("every direct measurement was zero: the calibration windows are too short to see any change")
    scale = float(np.exp(np.median(np.log(ratios))))
    rho = spearman([d["estimate"] for d in direct], [d["direct"] for d in direct])
    within = []
    for t in {d["type"] for d in direct}:
        rows = [d for d in direct if d["type"] == t]
        if len(rows) >= 3:
            within.append(spearman([d["estimate"] for d in rows], [d["direct"] for d in rows]))
    result = Sensitivity(
        cost={n: {t: scale * v for t, v in per.items()} for n, per in estimate.items()}, kv_cost=kv_cost,
        estimate=estimate, direct=direct, scale=scale, spearman=rho,
        spearman_within_type=float(np.mean(within)) if within else None,
        settings=asdict(settings),
        tokens={"fisher": sum(len(w) for w in run.fisher_windows), "direct": sum(len(w) for w in run.direct_windows)},
        seconds=time.perf_counter() - started,
    )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result.to_json()))
        os.replace(tmp, cache_path)
    return result


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

"""ONE full-precision reference per (model, text, protocol), computed once and cached on disk.

Every method and every runtime is compared with the very same log-probabilities: the cache file
holds, for each window, the reference's log-softmax over the scored positions as 16-bit codes
(eval/logprob_codec.py: half the bytes of fp32, after llama.cpp's KL-divergence base files; the KLD it
adds is measured there), the exact fp32 log-prob of each scored target (the reference's own
perplexity), and the token ids, so a llama.cpp run scores exactly the tokens the transformers run scored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantbench.artifact import atomic_file
from quantbench.errors import QuantbenchError
from quantbench.eval.divergence import QualityAccumulator, log_softmax
from quantbench.eval.logprob_codec import LOG_RANGE, decode_logprobs, encode_logprobs
from quantbench.eval.perplexity import PerplexityProtocol, Window


def reference_key(model_fingerprint: str, text_fingerprint: str, protocol: PerplexityProtocol, reference_dtype: str) -> str:
    blob = json.dumps([model_fingerprint, text_fingerprint, protocol.describe(), reference_dtype], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def reference_path(cache_root: Path, key: str) -> Path:
    return cache_root / "reference" / f"{key}.safetensors"


STORAGE = (f"log-probs as 16-bit codes over the {LOG_RANGE:g} nats below each token's top (eval/logprob_codec.py), "
           "the targets' log-probs in fp32; measured on the default model, the stored reference's own mean KLD "
           "against the exact one is 5e-9 nats (benchmarks/RESULTS.md, Compact reference)")


def compute_reference(runtime, windows: list[Window], path: Path, meta: dict, progress=None) -> None:
    """Run the reference runtime over every window and write its 16-bit log-probs atomically."""
    tensors = {}
    for k, w in enumerate(windows):
        logprobs = log_softmax(runtime.logits(w.input_ids)[w.first_scored :])
        targets = torch.tensor(w.targets, dtype=torch.int64)
        codes, scale_floor = encode_logprobs(logprobs)
        tensors[f"codes.{k}"] = codes.contiguous()
        tensors[f"scale_floor.{k}"] = scale_floor.contiguous()
        tensors[f"target_logprobs.{k}"] = logprobs.gather(-1, targets[:, None])[:, 0].contiguous()
        tensors[f"targets.{k}"] = targets
        if progress:
            progress(k + 1, len(windows))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"quantbench": json.dumps({**meta, "storage": STORAGE})})


class Reference:
    """Read access to a cached reference, one window at a time (it can be hundreds of MB)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = safe_open(str(path), "pt")
        self.meta = json.loads(self._file.metadata()["quantbench"])
        self.windows = sum(1 for k in self._file.keys() if k.startswith("codes."))
        if not self.windows:
            raise QuantbenchError(f"{path} is not a quantbench reference of this version (no 16-bit log-probs); "
                                  "delete it (or the cache's reference/ folder) and run again")

    def logprobs(self, k: int) -> torch.Tensor:
        """(tokens, vocab) float32, decoded from 16 bits; entries more than LOG_RANGE nats below the top are -inf."""
        return decode_logprobs(self._file.get_tensor(f"codes.{k}"), self._file.get_tensor(f"scale_floor.{k}"))

    def target_logprobs(self, k: int) -> torch.Tensor:
        """(tokens,) the exact fp32 log-prob of each scored target."""
        return self._file.get_tensor(f"target_logprobs.{k}")

    def targets(self, k: int) -> torch.Tensor:
        return self._file.get_tensor(f"targets.{k}")

    def check_matches(self, windows_targets: list[list[int]]) -> None:
        """Refuse to score against a cached reference computed for other tokens (a stale or mis-keyed
        cache would otherwise be scored silently)."""
        mismatch = None
        if self.windows != len(windows_targets):
            mismatch = f"it holds {self.windows} windows, the current protocol has {len(windows_targets)}"
        else:
            for k, targets in enumerate(windows_targets):
                if not torch.equal(self.targets(k), torch.tensor(targets, dtype=torch.int64)):
                    mismatch = f"window {k} scores other tokens than the current text gives"
                    break
        if mismatch:
            raise QuantbenchError(f"cached reference {self.path} does not match the current windows ({mismatch}); "
                                  "delete that file (or the cache's reference/ folder) and run again")


def reference_quality(reference: Reference) -> dict:
    """The reference's own perplexity (and its interval), from the same accumulator that scores every method,
    on the exact target log-probs (a (tokens, 1) log-prob table whose column 0 is the target)."""
    quality = QualityAccumulator()
    for k in range(reference.windows):
        target = reference.target_logprobs(k)
        quality.add(target[:, None], torch.zeros_like(reference.targets(k)), None)
    return quality.summary()


def reference_perplexity(reference: Reference) -> float:
    return reference_quality(reference)["ppl"]

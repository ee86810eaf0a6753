"""The transformers/PyTorch runtime: any artifact `AutoModelForCausalLM.from_pretrained` can load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from quantbench.device import describe_device
from quantbench.errors import QuantbenchError
from quantbench.runtimes.base import Runtime

log = logging.getLogger(__name__)


class HFRuntime(Runtime):
    name = "transformers"


    @classmethod
    def kv_cache_tokens_per_layer(cls, arch, context):
        """transformers' DynamicCache (cache_utils.get_layer_types_and_kwargs): layer_types from the
        config, else every layer sliding when `sliding_window` is set; a DynamicSlidingWindowLayer keeps
        the last sliding_window - 1 tokens."""
        window = arch.sliding_window
        layer_types = arch.layer_types or (("sliding_attention" if window else "full_attention",) * arch.num_layers)
        return [min(context, window - 1) if kind == "sliding_attention" and window else context for kind in layer_types]

    def __init__(self, model, device: str):
        self.model = model
        self.device = describe_device(device)
        self._torch_device = torch.device(device)
        self.dtype = str(model.dtype).removeprefix("torch.")
        self._past = None
        self._next = None
        self.placement = None  # accelerate's device map when loaded with max_memory

    @classmethod
    def load(cls, path: Path, device: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
             max_memory: dict | None = None) -> "HFRuntime":
        """`max_memory` ({0: bytes, 1: bytes, "cpu": bytes}, accelerate's form) caps each device: the model is
        split across the GPUs in order, and what does not fit is kept on the CPU and streamed to the GPU
        layer by layer as it runs (accelerate's big-model inference, device_map="auto")."""
        from transformers import AutoModelForCausalLM

        placement = {"device_map": device} if not max_memory else {"device_map": "auto", "max_memory": max_memory}
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", trust_remote_code=trust_remote_code, **placement)
        except (OSError, ValueError, RuntimeError) as exc:
            raise QuantbenchError(f"transformers could not load {path}: {exc}") from None
        model.eval()
        runtime = cls(model, device)
        runtime.placement = dict(getattr(model, "hf_device_map", {}) or {}) if max_memory else None
        return runtime

    def _ids(self, ids: Sequence[int], batch: int = 1) -> torch.Tensor:
        return torch.tensor([list(ids)] * batch, dtype=torch.long, device=self._torch_device)

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        return self.model(self._ids(ids), use_cache=False).logits[0].float().cpu()

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], batch: int = 1) -> None:
        out = self.model(self._ids(ids, batch), use_cache=True)
        self._past = out.past_key_values
        self._next = out.logits[:, -1:].argmax(-1)

    @torch.inference_mode()
    def decode(self, new_tokens: int) -> None:
        for _ in range(new_tokens):
            out = self.model(self._next, past_key_values=self._past, use_cache=True)
            self._past = out.past_key_values
            self._next = out.logits[:, -1:].argmax(-1)

    @torch.inference_mode()
    def generate(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        inputs = self._ids(ids)
        out = self.model.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=False
        )
        return out[0, inputs.shape[1] :].tolist()

    def synchronize(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def reported_footprint_bytes(self) -> int | None:
        return int(self.model.get_memory_footprint())

    def close(self) -> None:
        self.model = self._past = self._next = None

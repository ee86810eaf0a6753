"""A transformers model whose weights stay on disk until a layer is asked for.

The module tree is built with accelerate's `init_empty_weights(include_buffers=False)`: parameters
on the meta device (no memory), buffers such as the rotary inv_freq real. `load_layer` reads one
decoder layer's tensors from the checkpoint (one tensor resident on the host at a time), places them
on the device in the working dtype, and `release_layer` drops them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from quantbench.arch import ArchSpec
from quantbench.formats.safetensors_stream import CheckpointReader


class LazyModel:
    def __init__(self, source_dir: Path, trust_remote_code: bool = False):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.source_dir = Path(source_dir)
        self.hf_config = json.loads((self.source_dir / "config.json").read_text())
        self.arch = ArchSpec.from_config(self.hf_config)
        self.reader = CheckpointReader(self.source_dir)
        config = AutoConfig.from_pretrained(self.source_dir, trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model.eval()

    def layers(self) -> torch.nn.ModuleList:
        from quantbench.methods.sequential import decoder_layers

        return decoder_layers(self.model)

    def load_embedding(self, device: str) -> None:
        """The input embedding on `device`. A plain nn.Embedding keeps the checkpoint's dtype and casts
        the rows it looks up to fp32 (exactly what an fp32 table would return, at half the memory);
        any other embedding module (e.g. Gemma's scaled one) is materialized in fp32."""
        embed = self.model.get_input_embeddings()
        W = self.reader.read(f"{self.arch.family.embed}.weight")
        if type(embed) is torch.nn.Embedding:
            embed.weight = torch.nn.Parameter(W.to(device), requires_grad=False)
            self._embed_hook = embed.register_forward_hook(lambda module, args, out: out.float())
        else:
            embed.weight = torch.nn.Parameter(W.to(device).float(), requires_grad=False)
            self._embed_hook = None

    def release_embedding(self) -> None:
        embed = self.model.get_input_embeddings()
        if getattr(self, "_embed_hook", None) is not None:
            self._embed_hook.remove()
        embed.to("meta")

    def layer_tensor_names(self, index: int) -> list[str]:
        return [t.name for t in self.arch.tensors() if t.layer == index]

    def load_layer(self, index: int, device: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """Decoder layer `index` with the checkpoint's weights, on `device` in `dtype`."""
        layer = self.layers()[index]
        prefix = f"{self.arch.family.layers}.{index}."
        state = {}
        for name in self.layer_tensor_names(index):
            # device first, then dtype: a blocking copy that does both converts on the host (a host copy
            # of the tensor in `dtype` that the memory plan does not count)
            state[name.removeprefix(prefix)] = self.reader.read(name).to(device).to(dtype)
        layer.load_state_dict(state, strict=True, assign=True)
        return layer

    def release_layer(self, index: int) -> None:
        self.layers()[index].to("meta")

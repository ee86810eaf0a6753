"""The `quantbench` runtime: quantbench's own decoder over packed weights, decode replayed as one CUDA graph.

Loads the artifacts quantbench writes (floats, compressed-tensors int-grid, bitsandbytes 4-bit and
int8) with every linear kept in its stored format on the device (see stored.py, linears.py), so
memory is the stored bytes plus the KV cache. On CUDA, the first decode after a prefill captures
`Decoder.step` as a CUDA graph (no torch.compile: capture takes a second, not a minute); every further
token is one graph replay. On a CPU it runs the same code eagerly (for tests; it is not fast there).

Anything it cannot run gives one error naming `--runtime transformers`; it never falls back silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from quantbench.arch import ArchSpec
from quantbench.errors import QuantbenchError
from quantbench.runtimes.base import Runtime
from quantbench.runtimes.fast import stored
from quantbench.runtimes.fast.decoder import Decoder, GraphedStep, Layer
from quantbench.runtimes.fast.linears import OWN_NUMERICS, Linear, fuse_dense

log = logging.getLogger(__name__)

NAME = "quantbench"
CACHE_ROUND = 128  # cache lengths rounded up, so nearby prompt lengths reuse one cache and graph


def _hf_config(config: dict):
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config", "dtype", "torch_dtype")}
    return AutoConfig.for_model(config["model_type"], **fields)


def _eos_ids(config: dict, folder: Path | None) -> set[int]:
    eos = config.get("eos_token_id")
    if folder is not None and (folder / "generation_config.json").is_file():
        eos = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id", eos)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}


class FastRuntime(Runtime):
    name = NAME

    def __init__(self, decoder: Decoder, kind: stored.ArtifactKind, device: str, eos: set[int], kernels: dict[str, str],
                 numerics: list[str], weight_bytes: int):
        from quantbench.device import describe_device

        self.decoder = decoder
        self.kind = kind
        self._torch_device = torch.device(device)
        self.device = describe_device(device)
        self.dtype = str(decoder.dtype).removeprefix("torch.")
        self.eos = eos
        self.kernels = kernels  # role -> kernel used, for the record
        self.numerics = numerics  # where the arithmetic differs from what the artifact means
        self.weight_bytes = weight_bytes  # resident bytes of every weight on the device
        self._graph: GraphedStep | None = None
        self._prefilled = False
        # How decode runs: one CUDA graph per step, or eagerly (CPU; or a kernel that cannot be captured).
        self.decode_mode = "CUDA graph (one replay per token)" if self._torch_device.type == "cuda" else "eager (CPU)"

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, device: str, dtype: torch.dtype | None = None) -> "FastRuntime":
        """An artifact folder written by quantbench (or any HF folder of a family stored.py reads)."""
        path = Path(path)
        if path.is_file() and path.suffix == ".gguf":
            raise QuantbenchError("the quantbench runtime does not run GGUF files; use --runtime llama.cpp")
        config = stored.load_config(path)
        stored.artifact_kind(config)  # refuse what it cannot run before reading any weights
        return cls.from_source(config, stored.TensorSource(folder=path), device, dtype, eos=_eos_ids(config, path))

    @classmethod
    def from_source(cls, config: dict, source: stored.TensorSource, device: str, dtype: torch.dtype | None = None,
                    eos: set[int] | None = None) -> "FastRuntime":
        kind = stored.artifact_kind(config)
        arch = ArchSpec.from_config(config)
        compute = dtype or kind.dtype
        if compute == torch.float32 and kind.family == "float" and kind.dtype != torch.float32:
            log.info("computing a %s artifact in float32", kind.dtype)
        dev = torch.device(device)
        if dev.type == "cuda":
            _check_fits(source, dev)
        hf_config = _hf_config(config)
        kernels: dict[str, str] = {}
        numerics: set[str] = set()

        def dense(name: str) -> torch.Tensor:
            return source.get(name).to(device=dev, dtype=compute)

        def linear(module: str, role: str) -> Linear:
            weight = stored.move(stored.read_linear(source, module, kind), dev, compute)
            bias_name = f"{module}.bias"
            bias = dense(bias_name) if bias_name in source else None
            lin = Linear(weight, bias, compute)
            kernels.setdefault(role, lin.kernel)
            if lin.numerics != OWN_NUMERICS:
                numerics.add(lin.numerics)
            return lin

        # Module names from the arch record: the linears grouped by the activation they read, in forward
        # order (q/k/v, o, gate/up, down), and the two norms of a Llama-family layer.
        fam = arch.family
        (qkv_names, (o_name,), gate_up_names, (down_name,)) = fam.input_groups
        attn_norm, ffn_norm = (hf for hf, _, _ in fam.norms)
        layers = []
        for i in range(arch.num_layers):
            p = f"{fam.layers}.{i}."
            qkv = [linear(p + name, "attention q/k/v") for name in qkv_names]
            gate_up = [linear(p + name, "mlp gate/up") for name in gate_up_names]
            layers.append(Layer(
                attn_norm=dense(p + attn_norm + ".weight"),
                qkv=fuse_dense(qkv),
                o=linear(p + o_name, "attention out"),
                ffn_norm=dense(p + ffn_norm + ".weight"),
                gate_up=fuse_dense(gate_up),
                down=linear(p + down_name, "mlp down"),
            ))
        embed = dense(fam.embed + ".weight")
        lm_head = None
        if not arch.tie_word_embeddings:
            lm_head = linear(fam.lm_head, "lm_head")
        else:
            kernels["lm_head"] = "cuBLAS (tied to the embedding table)"
        decoder = Decoder(arch, hf_config, embed, layers, dense(fam.final_norm + ".weight"), lm_head, compute, dev)
        weight_bytes = embed.nbytes + decoder.norm.nbytes + sum(
            l.attn_norm.nbytes + l.ffn_norm.nbytes + sum(x.nbytes for x in (*l.qkv, l.o, *l.gate_up, l.down)) for l in layers
        ) + (0 if lm_head is None else lm_head.nbytes)
        return cls(decoder, kind, device, eos if eos is not None else _eos_ids(config, None), kernels, sorted(numerics), weight_bytes)

    @classmethod
    def kv_cache_tokens_per_layer(cls, arch, context):
        """A static cache: every layer holds the full (rounded-up) length, sliding window or not (the
        window is a mask here)."""
        return [-(-context // CACHE_ROUND) * CACHE_ROUND] * arch.num_layers

    # -- Runtime surface ---------------------------------------------------------------------------

    def _ids(self, ids: Sequence[int], batch: int = 1) -> torch.Tensor:
        ids = [int(t) for t in ids]
        if not ids:
            raise QuantbenchError("no tokens to evaluate")
        vocab = self.decoder.embed.shape[0]
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise QuantbenchError(f"token id {bad[0]} is outside the vocabulary of {vocab}: text tokenized for another model")
        return torch.tensor([ids] * batch, dtype=torch.long, device=self._torch_device)

    def _reserve(self, batch: int, length: int) -> None:
        length = min(-(-length // CACHE_ROUND) * CACHE_ROUND, max(length, self.decoder.max_positions))
        if self.decoder.ensure_cache(batch, length):
            self._graph = None

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        x = self._ids(ids)
        self._reserve(1, x.shape[1])
        out = self.decoder.prefill(x, all_logits=True)[0].cpu()
        self._prefilled = True
        return out

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], batch: int = 1, room: int = 256) -> None:
        """Fill a fresh cache with `ids` in each of `batch` rows; `room` positions stay free for decode."""
        if batch < 1:
            raise QuantbenchError("batch must be at least 1")
        x = self._ids(ids, batch)
        self._reserve(batch, x.shape[1] + room)
        self.decoder.prefill(x)
        self._prefilled = True
        self._end = x.shape[1]

    @torch.inference_mode()
    def decode(self, new_tokens: int) -> None:
        if not self._prefilled:
            raise QuantbenchError("decode() needs a prefill() first")
        if self._end + new_tokens > self.decoder.cache_length:
            raise QuantbenchError(
                f"the cache holds {self.decoder.cache_length} positions; prefill with room={new_tokens} or more"
            )
        step = self._step_fn()
        for _ in range(new_tokens):
            step()
        self._end += new_tokens

    @torch.inference_mode()
    def _step_fn(self):
        """The callable that runs one decode step (the decode state is made of inference tensors, so every
        caller runs under torch.inference_mode)."""
        eager = torch.inference_mode()(self.decoder.step)
        if self._torch_device.type != "cuda" or self.decode_mode.startswith("eager"):
            return eager
        if self._graph is None or not self._graph.valid_for(self.decoder):
            position, token = self.decoder.position.clone(), self.decoder.token.clone()
            try:
                self._graph = GraphedStep(self.decoder)
            except RuntimeError as exc:  # a kernel that syncs with the host (data-dependent shapes)
                self.decoder.position.copy_(position)
                self.decoder.token.copy_(token)
                self.decode_mode = f"eager (CUDA graph capture failed: {str(exc).splitlines()[0][:160]})"
                log.warning("quantbench runtime: decoding without a CUDA graph: %s", self.decode_mode)
                return eager
        return self._graph.replay

    @torch.inference_mode()
    def generate(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        self.prefill(ids, 1, room=max_new_tokens + 1)
        new: list[int] = []
        step = None
        while len(new) < max_new_tokens:
            token = int(self.decoder.token[0])
            if token in self.eos:
                break
            new.append(token)
            if len(new) == max_new_tokens:
                break
            step = step or self._step_fn()
            step()
            self._end += 1
        return new

    def synchronize(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def reported_footprint_bytes(self) -> int | None:
        """The runtime's own count: every weight tensor it holds on the device, packed as stored."""
        return self.weight_bytes

    def close(self) -> None:
        self._graph = None
        self.decoder = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()


def _check_fits(source: stored.TensorSource, device: torch.device) -> None:
    """Predict out-of-memory before loading: stored bytes against the device's free memory."""
    total = source.total_bytes()
    free, _ = torch.cuda.mem_get_info(device)
    if total > free:
        from quantbench.plan import format_bytes

        raise QuantbenchError(
            f"the artifact's weights need {format_bytes(total)} on {device} but only {format_bytes(free)} is free; "
            "free the GPU or pick a smaller method"
        )


def open_fast(artifact: Path, device: str, dtype: torch.dtype | None = None) -> FastRuntime:
    return FastRuntime.load(artifact, device, dtype)

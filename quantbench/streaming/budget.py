"""Peak memory and disk of streaming quantization, every term named, for `quantbench plan`.

Memory is ANONYMOUS memory (RssAnon on the host, torch's allocator on a GPU): the source checkpoint
is read with pread, never mapped, so it adds no file-backed pages (quantbench.memory_sampler).

A streaming job goes through phases, and only one phase's data is alive at a time, so

    host peak   = process baseline + max over phases of (sum of that phase's host terms)
    device peak =                    max over phases of (sum of that phase's device terms)

On a CPU the device terms live on the host and are added to it. Symbols in the term names:
S x T calibration samples of T tokens, B samples per forward chunk, hidden H, intermediate F,
a linear of rows x cols, `src` bytes per value of the checkpoint (2 for bf16).

The process baseline is measured, not derived: a quantize worker's RssAnon when its work starts, with
Python, torch, transformers, quantbench and compressed-tensors or bitsandbytes imported (2026-11-30:
0.31-0.32 GB on this project's CPU machine); a CUDA context adds host memory of its own
(CUDA_CONTEXT_HOST_BYTES, measured on the H200 machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantbench.arch import LINEAR, ArchSpec
from quantbench.formats.compressed_tensors import PACK_SLICE_VALUES
from quantbench.formats.safetensors_stream import CONVERT_SLICE_BYTES
from quantbench.runtimes.llamacpp_quantize import QUANTIZER_BUFFER_BYTES
from quantbench.streaming.intgrid import PHASE_PACK, RTN_SLICE_ELEMENTS
from quantbench.streaming.tensorwise import PHASE_DENSE, PHASE_LINEAR

BASELINE_HOST_BYTES = 320 * 10**6  # a quantize worker's RssAnon when its work starts (CPU, measured)
# Host RssAnon a CUDA context adds: a quantize worker started its work at 0.53-0.56 GB on an H200 host
# (torch 2.11+cu130, 2026-11-30) against 0.32 GB on the CPU machine.
CUDA_CONTEXT_HOST_BYTES = 230 * 10**6
# Slices the streaming code works in, from where they are used.
WRITE_SLICE_BYTES = CONVERT_SLICE_BYTES


def pack_scratch_bytes(rows: int, cols: int, bits: int) -> int:
    """pack_int32's scratch for a (rows, cols) linear (formats/compressed_tensors.py), one slice of rows at a time.

    Bits dividing 32: the slice as int64, shifted in place (+ a padded copy when cols is not a multiple
    of 32/bits), and its per-word sums (measured on 3584 x 1024 at 4 bits: 19.1 MB for 18.9 planned).
    Other bits: the slice's bit stream as int32, its masked copy, its int64 copy and the shifted copy,
    an upper bound read from the code, not measured.
    """
    if 32 % bits == 0:
        per = 32 // bits
        slice_values = min(rows, max(1, PACK_SLICE_VALUES // cols)) * cols
        padded = 8 * slice_values if cols % per else 0
        return 8 * slice_values + padded + 8 * slice_values // per
    slice_bits = min(rows, max(1, PACK_SLICE_VALUES // (cols * bits))) * cols * bits
    return (4 + 4 + 8 + 8) * slice_bits


STRATEGY_KINDS = ("rtn", "gptq", "awq", "bnb", "gguf-writer", "gguf-llama.cpp")


@dataclass(frozen=True)
class MemoryBudget:
    kind: str
    device: str
    baseline_host_bytes: int
    host_phases: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> term -> bytes
    device_phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def host_peak_bytes(self) -> int:
        return self.baseline_host_bytes + max((sum(t.values()) for t in self.host_phases.values()), default=0)

    @property
    def device_peak_bytes(self) -> int:
        return max((sum(t.values()) for t in self.device_phases.values()), default=0)

    def lines(self) -> list[str]:
        """Human-readable, every term."""
        out = [f"{self.kind} on {self.device}: host peak {self.host_peak_bytes / 1e9:.2f} GB"
               + (f", device peak {self.device_peak_bytes / 1e9:.2f} GB" if self.device_phases else "")]
        out.append(f"  host: process baseline {self.baseline_host_bytes / 1e9:.2f} GB + the largest phase of:")
        for where, phases in (("host", self.host_phases), ("device", self.device_phases)):
            if where == "device" and phases:
                out.append("  device: the largest phase of:")
            for phase, terms in phases.items():
                out.append(f"    {phase}: {sum(terms.values()) / 1e9:.3f} GB")
                out += [f"      {name}: {b / 1e9:.3f} GB" for name, b in terms.items()]
        return out


def _layer_linear_shapes(arch: ArchSpec) -> list[tuple[int, int]]:
    return [arch.linear_shape(kind) for _, _, kind in arch.family.linears]


def _input_group_cols(arch: ArchSpec) -> list[int]:
    """cols of each activation a layer's linears read (q/k/v share one, gate/up share one)."""
    return list(arch.input_widths().values())


def _packed_bytes(rows: int, cols: int, bits: int, group_size: int) -> int:
    from quantbench.formats.compressed_tensors import linear_bytes

    return linear_bytes(rows, cols, bits, max(1, min(group_size, cols)))


def streaming_budget(
    kind: str,
    arch: ArchSpec,
    device: str = "cpu",
    source_bytes: int = 2,
    bits: int = 4,
    group_size: int = 128,
    calibration_samples: int = 32,
    calibration_length: int = 512,
    batch_size: int = 16,
    stored_bytes: dict[str, int] | None = None,
) -> MemoryBudget:
    """The phases and terms of one streaming quantize job (see the module docstring)."""
    if kind not in STRATEGY_KINDS:
        raise ValueError(f"unknown streaming kind {kind!r}; one of {STRATEGY_KINDS}")
    tensors = arch.tensors()
    biggest = max(tensors, key=lambda t: t.numel)
    linears = [t for t in tensors if t.role == LINEAR]
    rows, cols = max(_layer_linear_shapes(arch), key=lambda s: s[0] * s[1])
    L = rows * cols
    layer_numel = sum(t.numel for t in tensors if t.layer == 0)
    layer_linear_numel = sum(t.numel for t in linears if t.layer == 0)
    H, F = arch.hidden_size, arch.intermediate_size
    S, T, B = calibration_samples, calibration_length, min(batch_size, calibration_samples)
    big_read = {f"largest tensor read from the checkpoint ({biggest.name.split('.')[-2]}, {biggest.numel / 1e6:.0f} M x src)": biggest.numel * source_bytes}
    write_slice = {"one slice of it cast for writing (none if stored in the checkpoint's dtype)": min(WRITE_SLICE_BYTES, biggest.numel * 2)}
    host: dict[str, dict[str, int]] = {}
    dev: dict[str, dict[str, int]] = {}

    if kind == "rtn":
        # streaming/intgrid.py: the read linear goes to the device, is cast to fp32 there, rounded a slice
        # of rows at a time into preallocated codes; then packed (PHASE_PACK) and appended.
        slice_rows = min(rows, max(1, RTN_SLICE_ELEMENTS // cols))
        S = slice_rows * cols
        groups = rows * -(-cols // group_size)
        host[PHASE_DENSE] = {**big_read, **write_slice}
        host[PHASE_LINEAR] = {f"the largest linear read ({rows} x {cols} x src)": L * source_bytes}
        host[PHASE_PACK] = {f"the largest linear read ({rows} x {cols} x src)": L * source_bytes}
        dev[PHASE_LINEAR] = {
            "the largest linear in fp32": L * 4,
            f"rounding one slice of {slice_rows} rows: two fp32 temporaries and its uint8 codes": 9 * S,
            "scales and zero points, fp32 while computed": groups * 8,
        }
        if S < L:
            dev[PHASE_LINEAR]["the whole linear's uint8 codes, preallocated (it takes several slices)"] = L
        if device.startswith("cuda"):  # on a CPU the read tensor is the source of the cast, counted on the host
            dev["one linear: cast on the device"] = {"the largest linear as read (src)": L * source_bytes, "and in fp32": L * 4}
        dev[PHASE_PACK] = {
            "its codes (uint8), scales (2 B) and zero points (1 B)": L + groups * 3,
            "its packed form": _packed_bytes(rows, cols, bits, group_size),
            "packing scratch": pack_scratch_bytes(rows, cols, bits),
        }
    elif kind in ("gptq", "awq"):
        hidden_states = S * T * H * 4
        forward = B * T * (2 * H + 3 * F) * 4
        host["embedding read; written at the start"] = {**big_read, **write_slice}
        host["one layer"] = {
            "one source tensor being read": L * source_bytes,
            "the layer's codes and scales on the host until written (1 B/weight)": layer_linear_numel,
            "packed form of the largest linear": _packed_bytes(rows, cols, bits, group_size),
            "packing scratch": pack_scratch_bytes(rows, cols, bits),
        }
        dev["capture layer 0 inputs"] = {
            "embedding in the checkpoint's dtype": arch.vocab_size * H * source_bytes,
            "layer-0 inputs, S x T x H fp32": hidden_states,
        }
        layer = {
            "one decoder layer in fp32": layer_numel * 4,
            "calibration activations: layer inputs and outputs, 2 x S x T x H fp32": 2 * hidden_states,
            "forward of one chunk: B x T x (2H + 3F) fp32": forward,
        }
        if kind == "gptq":
            down = max(_input_group_cols(arch))
            layer[f"Hessian of the widest input and GPTQ's 4 working copies (H, damped H, Cholesky, its inverse), 5 x {down}^2 fp32"] = 5 * down * down * 4
            layer[f"fp32 W, W_hat, the RTN comparison and W H of the largest linear, 4 x {rows} x {cols} fp32"] = 4 * L * 4
        else:
            layer["Hessians of every input of the layer, sum cols^2 fp32"] = sum(c * c * 4 for c in _input_group_cols(arch))
            layer["original fp32 copies of the layer's linears (errors in original coordinates)"] = layer_linear_numel * 4
            layer[f"scale search over the widest group: 3 x its weights fp32 ({F} x {H} x 2)"] = 3 * 2 * F * H * 4
        dev["one layer"] = layer
    elif kind == "bnb":
        host[PHASE_DENSE] = {**big_read, **write_slice}
        host[PHASE_LINEAR] = {
            f"the largest linear read ({rows} x {cols} x src)": L * source_bytes,
            "its 4-bit codes and fp32 absmax on the host for writing": L // 2 + L // 64 * 4,
        }
        dev[PHASE_LINEAR] = {
            "the largest linear in the compute dtype (bf16)": L * 2,
            "its 4-bit codes and absmax": L // 2 + L // 64 * 4,
        }
    elif kind == "gguf-writer":
        host["one tensor"] = {
            **big_read,
            "its fp32 copy (the writer encodes from fp32)": biggest.numel * 4,
            "its encoded form (<= 2 B/value)": biggest.numel * 2,
        }
    elif kind == "gguf-llama.cpp":
        # llama.cpp converts and quantizes whole rows (ne[0] = the tensor's last dimension here), as many
        # as fit in max_buf_size: the source rows (mapped from the file unless they need reading), their
        # fp32 conversion (none for an fp32 source) and their output.
        row = biggest.shape[-1]
        fp32_row = 0 if source_bytes == 4 else row * 4
        slab_rows = min(biggest.numel // row, max(1, QUANTIZER_BUFFER_BYTES // (row * source_bytes + fp32_row + row)))
        slab = {"their quantized output buffer (<= 1 B/value for <= 8-bit types)": slab_rows * row}
        if fp32_row:
            slab["those rows converted to fp32"] = slab_rows * fp32_row
        host[f"llama.cpp's quantizer, {slab_rows} rows of the largest tensor at once (max_buf_size; input file mapped: file-backed, not counted)"] = slab
    uses_cuda = device.startswith("cuda") and kind in ("rtn", "gptq", "awq", "bnb")  # GGUF conversion runs on the host
    baseline = BASELINE_HOST_BYTES + (CUDA_CONTEXT_HOST_BYTES if uses_cuda else 0)
    if not device.startswith("cuda"):  # the device is the host
        for phase, terms in dev.items():
            host[phase] = {**host.get(phase, {}), **terms}
        dev = {}
    return MemoryBudget(kind, device, baseline, host, dev)


def disk_budget(kind: str, arch: ArchSpec, artifact_bytes: int, source_bytes: int = 2, replaced_bytes: int = 0) -> dict[str, int]:
    """Free disk a quantize job needs on the output's filesystem, term by term.

    The artifact is written into a temporary sibling folder and renamed over any existing output only
    when complete, so the old output (`replaced_bytes`) stays until then.
    """
    terms = {"the artifact (every tensor's stored bytes)": artifact_bytes, "config, tokenizer, headers (allowance)": 64 * 2**20}
    if kind == "gguf-llama.cpp":
        terms["lossless intermediate GGUF (the source's precision), deleted after"] = arch.num_params() * source_bytes
    if replaced_bytes:
        terms["the existing output, replaced only after success"] = replaced_bytes
    return terms

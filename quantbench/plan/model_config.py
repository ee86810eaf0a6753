"""MODEL -> its config.json, completed with transformers' defaults: all `quantbench plan` needs.

Config only, so a preset, a bare config.json or a hub id plans without downloading weights; the
built-in default model and .gguf files go through quantbench.sources.model.resolve_model, which
the measuring commands use too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantbench.arch import text_config
from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class ModelConfig:
    name: str  # what the user typed
    source: str  # "preset", "local folder", "config.json", "hub", "built-in default model", "gguf"
    config: dict  # completed with transformers' defaults (what transformers would build)
    hub_id: str | None = None
    notes: tuple[str, ...] = ()


def complete_config(raw: dict) -> tuple[dict, list[str]]:
    """The config as transformers reads it: published files omit defaults (Gemma-2 omits
    tie_word_embeddings, whose default True removes lm_head), so fill them in from transformers'
    own config class. Multimodal configs give their text config."""
    notes: list[str] = []
    config = text_config(raw)
    model_type = config.get("model_type")
    if not model_type:
        raise QuantbenchError("the config has no model_type; is this a transformers config.json?")
    try:
        from transformers import AutoConfig

        fields = {k: v for k, v in config.items() if k != "model_type"}
        completed = AutoConfig.for_model(model_type, **fields).to_dict()
        completed["model_type"] = model_type
        if "dtype" not in completed or completed["dtype"] is None:
            completed["dtype"] = config.get("torch_dtype") or config.get("dtype")
        return completed, notes
    except Exception as exc:  # transformers does not know this model_type: read the file as it is
        notes.append(f"transformers could not read the config ({type(exc).__name__}); defaults were not filled in")
        return dict(config), notes


def load_model_config(spec: str | None) -> ModelConfig:
    """MODEL -> config: a preset name, a local folder or config.json, a .gguf, or a hub id (config only)."""
    from quantbench.presets import find_preset, preset_names
    from quantbench.sources.model import DEFAULT_MODEL, resolve_model

    if spec is None or spec == DEFAULT_MODEL:
        source = resolve_model(None)
        config, notes = complete_config(source.config())
        return ModelConfig(DEFAULT_MODEL, "built-in default model", config, None, tuple(notes))
    preset = find_preset(spec)
    if preset is not None:
        name, hub_id, raw = preset
        config, notes = complete_config(raw)
        return ModelConfig(name, "preset", config, hub_id, tuple(notes))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QuantbenchError(f"{path}: no config.json in this folder; plan needs only config.json")
        return _from_file(spec, path / "config.json", "local folder")
    if path.is_file() and path.suffix == ".json":
        return _from_file(spec, path, "config.json")
    if path.is_file() and path.suffix == ".gguf":
        config, notes = complete_config(resolve_model(str(path)).config())
        return ModelConfig(spec, "gguf", config, None, tuple(notes))
    if path.exists():
        raise QuantbenchError(f"{spec}: expected a model folder, a config.json or a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hub(spec)
    raise QuantbenchError(
        f"model '{spec}' not found: give a preset ({', '.join(preset_names())}), a local folder or "
        "config.json, a .gguf file, or a hub id (org/name)"
    )


def _from_file(spec: str, path: Path, source: str) -> ModelConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{path}: unreadable JSON ({exc})") from None
    config, notes = complete_config(raw)
    return ModelConfig(spec, source, config, None, tuple(notes))


def _from_hub(repo_id: str) -> ModelConfig:
    from quantbench.presets import preset_names

    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json", etag_timeout=10)
    except Exception as exc:
        raise QuantbenchError(
            f"could not fetch config.json of '{repo_id}' from the Hugging Face hub ({type(exc).__name__}). "
            f"Offline? Pass a local config.json, or a preset: {', '.join(preset_names())}"
        ) from None
    cfg = _from_file(repo_id, Path(path), "hub")
    return ModelConfig(repo_id, "hub", cfg.config, repo_id, cfg.notes)



"""MODEL -> its config.json, completed with transformers' defaults: all `quantbench plan` needs.

Config only, so a preset, a bare config.json or a hub id plans without downloading weights. What
MODEL is comes from the one resolver (quantbench.sources.model.classify) that the measuring
commands use too; the built-in default model and .gguf files are converted by resolve_model.
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
    """MODEL -> config, through the resolver every command uses (quantbench.sources.model.classify):
    a preset, a local folder or config.json, a .gguf, a hub id (config.json only), or the default."""
    from quantbench.sources.model import classify, resolve_model

    model = classify(spec)
    if model.kind == "preset":
        raw = model.preset_config
    elif model.kind in ("built-in default model", "gguf"):
        raw = resolve_model(spec).config()  # transformers reads a GGUF's config by converting it (cached once)
    elif model.kind == "local folder":
        if not (model.path / "config.json").is_file():
            raise QuantbenchError(f"{model.path}: no config.json in this folder; plan needs only config.json")
        raw = _read_json(model.path / "config.json")
    elif model.kind == "config.json":
        raw = _read_json(model.path)
    else:
        raw = _read_json(_hub_config_file(model.hub_id))
    config, notes = complete_config(raw)
    return ModelConfig(model.name, model.kind, config, model.hub_id, tuple(notes))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{path}: unreadable JSON ({exc})") from None


def _hub_config_file(repo_id: str) -> Path:
    from quantbench.presets import preset_names

    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json", etag_timeout=10))
    except Exception as exc:
        raise QuantbenchError(
            f"could not fetch config.json of '{repo_id}' from the Hugging Face hub ({type(exc).__name__}). "
            f"Offline? Pass a local config.json, or a preset: {', '.join(preset_names())}"
        ) from None

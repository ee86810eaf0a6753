"""The steps every command shares: token ids prepared once, the one cached reference, one method
quantized and one artifact measured, each in a fresh process (quantbench.jobs) so its peak memory is
its own. quantbench.api composes them into quantize, evaluate and compare; quantbench.fit reuses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from quantbench.arch import ArchSpec
from quantbench.artifact import META_FILE, atomic_dir, read_meta, versions, write_json_atomic
from quantbench.errors import QuantbenchError
from quantbench.eval.perplexity import Window, make_windows
from quantbench.eval.results import Measured, ResultRow, Storage
from quantbench.jobs import EvaluateJob, QuantizeArtifactJob, ReferenceJob, SpeedRequest
from quantbench.settings import Settings
from quantbench.sources.model import ModelSource, cache_dir, resolve_model
from quantbench.sources.text import Text, calibration_samples, load_text, split_tokens
from quantbench.worker import run_in_fresh_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    """Token ids prepared once in the parent, so every method and runtime sees the very same ids."""

    source: ModelSource
    text: Text
    settings: Settings
    windows: tuple[Window, ...]
    calibration: tuple[tuple[int, ...], ...]
    prompt_ids: tuple[int, ...]
    tokenizer: object = None
    bos_rule: str = ""  # why BOS is (not) added to every window (eval/bos.py), for the protocol line


def prepare(model: str | None, text: str | None, settings: Settings, trust_remote_code: bool = False) -> Workload:
    from transformers import AutoTokenizer

    from quantbench.eval.bos import default_bos
    from quantbench.recipes.open import check_runtime

    check_runtime(settings.runtime)  # an unknown --runtime fails before any work
    source = resolve_model(model, trust_remote_code)
    corpus = load_text(text)
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    bos = default_bos(source.path, tokenizer, settings.add_bos)
    if bos.add_bos and tokenizer.bos_token_id is None:
        raise QuantbenchError(f"BOS wanted ({bos.reason}) but this tokenizer has no BOS token; use --no-add-bos")
    settings = replace(settings, protocol=replace(settings.protocol, bos_token_id=tokenizer.bos_token_id if bos.add_bos else None))
    ids = tokenizer(corpus.content, add_special_tokens=False)["input_ids"]
    splits = split_tokens(ids, settings.calibration_fraction)
    windows = make_windows(splits.evaluation, settings.protocol)
    calib = []
    if len(splits.calibration) >= settings.calibration_length:
        calib = calibration_samples(splits.calibration, settings.calibration_samples, settings.calibration_length)
    prompt = splits.evaluation[: settings.prompt_tokens]
    return Workload(source, corpus, settings, tuple(windows), tuple(tuple(c) for c in calib), tuple(prompt), tokenizer,
                    bos.reason)


def ensure_reference(work: Workload, device: str, env: dict | None = None) -> tuple[Path, float]:
    """The one shared reference for (model, text, protocol): compute once, reuse from the cache.
    `env` adds to the job's environment (compare --devices: the GPU it may see)."""
    from quantbench.eval.reference import Reference, reference_key, reference_path, reference_perplexity

    # The reference runs in the checkpoint's own dtype ("auto"); bump the tag when the cache layout changes.
    key = reference_key(work.source.fingerprint, work.text.fingerprint, work.settings.protocol, "auto-dtype/v2-logprob16")
    path = reference_path(cache_dir(), key)
    if not path.is_file():
        log.info("computing the full-precision reference once (%d windows)", len(work.windows))
        if work.settings.max_memory:  # the cap may name several GPUs: the job sees every GPU
            env, device = None, "cuda" if device.startswith("cuda") else device
        meta = {"model": work.source.name, "model_fingerprint": work.source.fingerprint, "text": work.text.name,
                "text_fingerprint": work.text.fingerprint, "protocol": work.settings.protocol.describe()}
        run_in_fresh_process(ReferenceJob(str(work.source.path), device, work.windows, str(path), meta,
                                          work.source.trust_remote_code, work.settings.max_memory), env)
    ref = Reference(path)
    ref.check_matches([w.targets for w in work.windows])
    return path, reference_perplexity(ref)


def quantize_to(work: Workload, method: str, out: Path, device: str, env: dict | None = None) -> dict:
    """Write `method`'s artifact for the workload's model to `out` (atomically) and return its metadata.

    `out` ending in .gguf (gguf-* methods) is ONE GGUF file, as llama.cpp users expect: quantbench's
    metadata travels inside it as quantbench.* key-values (formats/gguf_metadata.py), set while the file
    is written. Any other `out` is a folder with the format's files and quantbench.json."""
    import os
    import tempfile

    from quantbench.recipes import get_recipe

    recipe = get_recipe(method)
    out = Path(out)
    single_gguf = out.suffix == ".gguf"
    if single_gguf and recipe.family != "gguf":
        raise QuantbenchError(f"-o {out}: a .gguf output needs a gguf-* method; {method} writes a folder, so give a folder name")
    if single_gguf and out.is_dir():
        raise QuantbenchError(f"-o {out} is a folder (an earlier quantbench wrote GGUF artifacts as folders); "
                              "remove it or give another name")
    reason = recipe.unavailable_reason(device)
    if reason:
        raise QuantbenchError(f"{method} cannot run on {device} here: {reason}")
    calib = work.calibration if recipe.needs_calibration else ()
    if recipe.needs_calibration and not calib:
        raise QuantbenchError(f"{method} needs calibration text: the calibration split is shorter than one sample of "
                              f"{work.settings.calibration_length} tokens; give a longer --text")
    meta = {"method": method, "runtime": recipe.runtime, "format_version": 1, "device": device,
            "source": {"name": work.source.name, "path": str(work.source.path), "fingerprint": work.source.fingerprint},
            "calibration": {"text": work.text.name, "text_fingerprint": work.text.fingerprint, "samples": len(calib),
                            "length": work.settings.calibration_length} if calib else None,
            "versions": versions()}
    if single_gguf:
        out.parent.mkdir(parents=True, exist_ok=True)
        replaced = out.stat().st_size if out.is_file() else 0
        workspace = tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent)  # same filesystem
    else:
        replaced = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0
        workspace = atomic_dir(out)
    with workspace as tmp:
        tmp = Path(tmp)
        result = run_in_fresh_process(QuantizeArtifactJob(method, str(work.source.path), work.source.name,
                                                          work.source.fingerprint, str(tmp), device, calib,
                                                          work.settings.calibration_samples,
                                                          work.settings.calibration_length, replaced,
                                                          meta if recipe.family == "gguf" else None), env)
        meta.update(result)
        meta.update(storage_summary(tmp, work.source, method))
        if single_gguf:
            from quantbench.recipes.gguf import ARTIFACT_FILE

            os.replace(tmp / ARTIFACT_FILE, out)  # one rename on the same filesystem: the whole file or none
        else:
            write_json_atomic(tmp / META_FILE, meta)
    return meta


def storage_summary(artifact: Path, source: ModelSource, method: str | None) -> dict:
    """True stored bytes and bits per weight, read back from the written files."""
    from quantbench.eval.memory import bits_per_weight, stored_tensor_bytes

    arch = ArchSpec.from_config(source.config())
    stored = stored_tensor_bytes(artifact)
    quantized = _quantized_tensor_names(arch, stored, method)
    return bits_per_weight(stored, arch, quantized)


def _quantized_tensor_names(arch: ArchSpec, stored: dict[str, int], method: str | None) -> set[str]:
    """Which model tensors the method quantizes: from its plan when it has one, else from the bytes."""
    from quantbench.eval.memory import group_by_spec
    from quantbench.recipes import get_recipe

    if method not in (None, "hf", "gguf-file"):
        try:
            recipe = get_recipe(method)
            return {t.name for t in arch.tensors() if recipe.plan_tensor(t, arch).quantized}
        except NotImplementedError:
            pass
    grouped, _ = group_by_spec(stored, arch)
    return {t.name for t in arch.tensors() if t.name in grouped and grouped[t.name] * 8 < 16 * t.numel}


def evaluate_artifact(work: Workload, artifact: Path, device: str, reference: Path, reference_ppl: float,
                      tasks: list[dict] | None = None, env: dict | None = None) -> ResultRow:
    """Measure one artifact in a fresh process (quantbench.eval.evaluate) and type its row."""
    from quantbench.recipes.open import default_runtime
    from quantbench.runtimes import runtime_class

    s = work.settings
    speed = SpeedRequest(work.prompt_ids, s.new_tokens, s.batch, s.repeats, s.warmup) if s.measure_speed else None
    runtime = s.runtime or default_runtime(Path(artifact), device)
    job = EvaluateJob(str(artifact), device, work.windows, str(reference), speed, tuple(tasks) if tasks else None,
                      runtime, runtime_class(runtime).import_first_on_cuda if device.startswith("cuda") else None)
    from quantbench.eval.divergence import PER_TOKEN
    from quantbench.eval.tasks import PER_ITEM

    raw = run_in_fresh_process(job, env)
    per_token = {**raw["metrics"].pop(PER_TOKEN, {}), **raw["metrics"].pop(PER_ITEM, {})}
    measured = Measured(**raw)
    meta = read_meta(artifact)
    if "weight_bytes" not in meta:
        meta.update(storage_summary(artifact, work.source, meta["method"]))
    storage = Storage(meta["weight_bytes"], meta["bits_per_weight"], meta.get("bits_per_weight_quantized"),
                      meta.get("quantize_seconds"), meta.get("quantize_peak_bytes"))
    return ResultRow.from_measurement(meta["method"], storage, measured, reference_ppl, per_token)


def artifact_matches(artifact: Path, work: Workload, method: str, device: str) -> bool:
    """Resume: reuse an artifact written earlier for the same model, method and calibration."""
    meta_path = artifact / META_FILE
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    calib = meta.get("calibration")
    same_calibration = calib is None or (calib.get("text_fingerprint") == work.text.fingerprint
                                         and calib.get("samples") == len(work.calibration)
                                         and calib.get("length") == work.settings.calibration_length)
    return (meta.get("method") == method and meta.get("source", {}).get("fingerprint") == work.source.fingerprint
            and meta.get("device") == device and same_calibration)

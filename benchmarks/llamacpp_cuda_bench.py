"""GGUF on the GPU through llama.cpp itself: a Llama-3.1-8B-shaped model with random weights, written by
quantbench's GGUF writer as F16, quantized by llama.cpp's own quantizer, run with every layer offloaded.

Two phases, so the F16 file can be written while llama.cpp's CUDA build is still compiling:

    python3 benchmarks/llamacpp_cuda_bench.py write --dir /tmp/gguf          # needs torch + gguf only
    python3 benchmarks/llamacpp_cuda_bench.py measure --dir /tmp/gguf --out $OUT/llamacpp.json \
        [--types Q8_0,Q6_K,Q4_K_M] [--batches 1,8,32]                          # needs the CUDA llama_cpp

`measure` imports llama_cpp before anything else (a CUDA build segfaulted at model load when numpy or
torch came first), quantizes F16 -> each type with llama_model_quantize, and times prefill 512 + decode
128 tokens per batch through quantbench's llama.cpp runtime (C API, all layers on the GPU, no mmap).
GPU memory: llama.cpp's own buffer report (model + KV + compute) and NVML's device memory in use.
"""

import os
import sys

if len(sys.argv) > 1 and sys.argv[1] == "measure":
    import llama_cpp  # noqa: F401  (first: see the module docstring)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MODEL = os.environ.get("QB_MODEL", "Llama-3.1-8B")  # a preset name or a model folder


def write(folder: Path) -> None:
    """Random bf16 weights (synthetic.py, the bench's own draw) saved as an HF folder, then written to GGUF
    F16 by quantbench's writer; the HF folder is removed afterwards (disk)."""
    from safetensors.torch import save_file

    from quantbench.formats.gguf_writer import write_gguf
    from quantbench.plan import load_model_config
    from quantbench.recipes import get_recipe
    from quantbench.synthetic import packed_random_artifact

    folder.mkdir(parents=True, exist_ok=True)
    hf = folder / "hf"
    hf.mkdir(exist_ok=True)
    config = load_model_config(MODEL).config
    t0 = time.perf_counter()
    # Drawn on the CPU: the GPU may be timing something else meanwhile.
    art_config, tensors, _ = packed_random_artifact(config, get_recipe("bf16"), "cpu", seed=0)
    shard, size, index = {}, 0, 0
    for name in list(tensors):
        shard[name] = tensors.pop(name)
        size += shard[name].nbytes
        if size > 4 * 2**30 or not tensors:
            save_file(shard, str(hf / f"model-{index:05d}.safetensors"), metadata={"format": "pt"})
            shard, size, index = {}, 0, index + 1
    (hf / "config.json").write_text(json.dumps({**art_config, "architectures": ["LlamaForCausalLM"]}))
    _tiny_tokenizer(hf)
    print(f"random HF folder: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    result = write_gguf(hf, folder / "F16.gguf", "F16", model_name="random-llama-3.1-8b")
    print(f"GGUF F16 written by quantbench: {result.file_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
    shutil.rmtree(hf)


def _tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE of 512 entries (random weights need no real vocabulary; the GGUF writer pads the
    token list to the model's 128256 with unused entries)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 50], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)


def _nvml_used() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        return None


def measure(folder: Path, out: Path, types: list[str], batches: list[int], prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    import torch

    from quantbench.bench import measure_bandwidth
    from quantbench.eval.speed import measure_speed
    from quantbench.fast_bench import kv_bytes_at
    from quantbench.plan import load_model_config
    from quantbench.arch import ArchSpec
    from quantbench.runtimes.llamacpp_quantize import quantize_with_llama_cpp
    from quantbench.runtimes.llamacpp import LlamaCppRuntime, buffer_log

    arch = ArchSpec.from_config(load_model_config(MODEL).config)
    bandwidth = measure_bandwidth("cuda")
    torch.cuda.empty_cache()
    record = {
        "kind": "llama.cpp CUDA, random Llama-3.1-8B-shaped GGUF (quantbench writer F16 + llama.cpp quantizer)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "versions": {"llama_cpp_python": llama_cpp.__version__, "torch": torch.__version__},
        "bandwidth": bandwidth,
        "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batches": batches, "repeats": repeats,
                     "runtime": "quantbench LlamaCppRuntime (llama.cpp C API), n_gpu_layers=-1, use_mmap=False, "
                                "F16 KV cache, flash attention auto"},
        "rows": [],
        "rerun": "bash benchmarks/llamacpp_cuda_build.sh build && python3 benchmarks/llamacpp_cuda_bench.py write --dir D "
                 "&& python3 benchmarks/llamacpp_cuda_bench.py measure --dir D --out OUT",
    }
    prompt = torch.randint(0, arch.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    deadline = float(os.environ.get("DEADLINE", "inf"))  # epoch seconds: quantize nothing that cannot finish
    for file_type in ["F16", *types]:
        path = folder / f"{file_type}.gguf"
        if not path.is_file() and time.time() > deadline - 120:
            record["rows"].append({"method": f"gguf-{file_type.lower()}", "runtime": "llama.cpp",
                                   "status": "not measured: the device call's time ran out before quantizing"})
            continue
        try:
            if not path.is_file():
                t0 = time.perf_counter()
                quantize_with_llama_cpp(folder / "F16.gguf", path, file_type, nthread=16)
                print(f"{file_type}: quantized by llama.cpp in {time.perf_counter() - t0:.0f} s", flush=True)
            lock = _gpu_lock()  # no other GPU timing runs meanwhile (benchmarks/issue10_device.sh)
            used_before = _nvml_used()
            buffer_log.clear()
            t0 = time.perf_counter()
            runtime = LlamaCppRuntime(path, n_threads=16, device="cuda")
            load_s = time.perf_counter() - t0
            model_bytes = runtime.reported_footprint_bytes()
            # Bytes one decode step reads: every tensor but the token embedding (a row lookup) + the KV cache.
            embed_bytes = _tensor_bytes(path, "token_embd.weight")
            for batch in batches:
                speed = measure_speed(runtime, prompt, new_tokens, batch, repeats, warmup=1)
                per_step = model_bytes - embed_bytes + kv_bytes_at(arch, prompt_tokens + new_tokens / 2, batch)
                ceiling = batch * bandwidth["bytes_per_s"] / per_step
                row = {"method": f"gguf-{file_type.lower()}", "runtime": "llama.cpp", "batch": batch, "status": "ok",
                       "stored_bytes": path.stat().st_size, "model_bytes": model_bytes, "load_seconds": load_s,
                       "bytes_read_per_decode_step": int(per_step), "ceiling_decode_tok_s": ceiling,
                       "fraction_of_ceiling": speed["decode_tok_s"] / ceiling, "warm_ttft_s": speed["ttft_s"],
                       "llama_cpp_buffers_bytes": runtime.device_buffers(), "nvml_used_delta_bytes":
                       (_nvml_used() - used_before) if used_before is not None else None,
                       "kernels": {"all linears": "llama.cpp CUDA (ggml-cuda mmvq/mmq for quantized types, cuBLAS for F16)"},
                       **{k: speed[k] for k in ("prefill_tok_s", "decode_tok_s", "decode_tok_s_min", "decode_tok_s_max")}}
                record["rows"].append(row)
                print(json.dumps({k: row[k] for k in ("method", "batch", "decode_tok_s", "fraction_of_ceiling", "prefill_tok_s")}), flush=True)
            runtime.close()
            lock.close()
        except Exception as exc:
            logging.exception("%s failed", file_type)
            record["rows"].append({"method": f"gguf-{file_type.lower()}", "runtime": "llama.cpp", "status": f"error: {exc!r}"[:400]})
        out.write_text(json.dumps(record, indent=2, default=str))


def _gpu_lock():
    """An exclusive lock on $GPU_LOCK (held until the returned file is closed), or a no-op file."""
    import fcntl

    f = open(os.environ.get("GPU_LOCK", os.devnull), "a")
    if "GPU_LOCK" in os.environ:
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _tensor_bytes(path: Path, name: str) -> int:
    from gguf import GGUFReader

    for t in GGUFReader(str(path)).tensors:
        if t.name == name:
            return int(t.n_bytes)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["write", "measure"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", default="llamacpp_cuda.json")
    ap.add_argument("--types", default="Q8_0,Q6_K,Q4_K_M")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.phase == "write":
        write(Path(args.dir))
    else:
        measure(Path(args.dir), Path(args.out), args.types.split(","), [int(b) for b in args.batches.split(",")],
                args.prompt_tokens, args.new_tokens, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time and device memory of gptq-w4g128 on a Llama-3.1-8B-shaped model with random weights.

The model is never built whole: each decoder layer is created directly on the device with random
weights, quantized by quantbench's layer-by-layer driver (true-sequential GPTQ, the same code the
gptq-* recipes run), run to produce the next layer's inputs, and dropped. Calibration: `--samples`
sequences of `--length` random hidden states (the embedding of random tokens through a random
table is no more real than that). Reference point: the GPTQ paper quantizes BLOOM-7.1B in 10.0
minutes on one A100 (Frantar et al. 2023, Table 2 / s.5; 128 x 2048 tokens of C4).

    python benchmarks/gptq_gpu_time.py                # CUDA, full 8B shape, 128 x 2048
    python benchmarks/gptq_gpu_time.py --tiny         # tiny shape, runs on CPU in seconds

Prints one JSON line per layer and a final JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny Llama shape, 8 x 128 tokens; CPU unless --device")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--samples", type=int, default=None, help="calibration sequences (default 128; tiny 8)")
    parser.add_argument("--length", type=int, default=None, help="tokens per sequence (default 2048; tiny 128)")
    parser.add_argument("--layers", type=int, default=None, help="quantize only the first N layers (default all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="layer weights and activations; GPTQ math is fp32")
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward chunk")
    args = parser.parse_args()

    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from quantbench.arch import FAMILIES
    from quantbench.methods import sequential
    from quantbench.methods.gptq import GPTQConfig

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    samples = args.samples or (8 if args.tiny else 128)
    length = args.length or (128 if args.tiny else 2048)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(**(TINY if args.tiny else LLAMA_31_8B))
    config._attn_implementation = "sdpa"
    n_layers = min(args.layers or config.num_hidden_layers, config.num_hidden_layers)
    gptq = GPTQConfig(bits=4, group_size=128 if not args.tiny else 64)
    torch.manual_seed(0)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        hidden = [torch.randn(min(args.batch, samples - s), length, config.hidden_size, dtype=dtype) * 0.02 for s in range(0, samples, args.batch)]
        position_ids = torch.arange(length)[None, :]
        cos, sin = LlamaRotaryEmbedding(config)(hidden[0], position_ids)
    layer_kwargs = {"position_embeddings": (cos, sin), "position_ids": position_ids, "attention_mask": None, "use_cache": False}
    inputs = sequential.LayerInputs(hidden, [layer_kwargs] * len(hidden))
    activation_bytes = sum(h.numel() * h.element_size() for h in hidden)

    def build_layers():
        for index in range(n_layers):
            with torch.device(device):
                layer = LlamaDecoderLayer(config, index).to(dtype).eval()
            yield layer  # the generator keeps no reference once the driver moves on

    per_layer = []

    def quantize_layer(layer, layer_inputs, prefix, result):
        start = time.perf_counter()
        sequential.gptq_layer(layer, layer_inputs, prefix, FAMILIES["llama"], lambda name, W: gptq, result)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        per_layer.append(time.perf_counter() - start)
        line = {"layer": len(per_layer) - 1, "gptq_seconds": round(per_layer[-1], 2)}
        if device.startswith("cuda"):
            line["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        print(json.dumps(line), flush=True)

    start = time.perf_counter()
    result = sequential.quantize_layers(build_layers(), inputs, device, quantize_layer, FAMILIES["llama"].layers, offload=False)
    total = time.perf_counter() - start
    layer_params = sum(p.numel() for p in LlamaDecoderLayer(config, 0).parameters())
    errors = result.errors.values()
    summary = {
        "benchmark": "gptq-w4g128 layer by layer, random weights",
        "shape": "tiny" if args.tiny else "Llama-3.1-8B",
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "layers": n_layers,
        "calibration": {"samples": samples, "length": length, "tokens": samples * length, "kind": "random hidden states"},
        "dtype": args.dtype,
        "gptq": {"bits": gptq.bits, "group_size": gptq.group_size, "damp": gptq.damp, "block_size": gptq.block_size, "true_sequential": True},
        "seconds_total": round(total, 1),
        "seconds_per_layer_median": round(sorted(per_layer)[len(per_layer) // 2], 2),
        "seconds_all_layers_extrapolated": round(total / n_layers * config.num_hidden_layers, 1),
        "torch_cuda_max_memory_allocated_bytes": result.peak_device_bytes,
        "calibration_activation_bytes": activation_bytes,
        "one_layer_bytes": layer_params * torch.finfo(dtype).bits // 8,
        "mean_relative_output_error": sum(e["error"] for e in errors) / len(result.errors),
        "mean_relative_output_error_rtn": sum(e["rtn_error"] for e in errors) / len(result.errors),
        "reference": "GPTQ paper: BLOOM-7.1B in 10.0 min on one A100",
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Streaming RTN on the CPU: measured peak RssAnon per phase against the plan's terms (issue 12).

A checkpoint shaped like the 8B case at a smaller size (the embedding and lm_head dominate: vocabulary
128256 x hidden 1024, 2 layers, linears of 3584 x 1024; bf16, sharded) is written to a scratch folder,
then quantized with rtn-w4g128 (fp16 scales and dense tensors: the bf16 embedding is cast while written)
REPEATS times, each in a fresh process, sampling RssAnon per phase (quantbench.memory_sampler). Each
phase's work (its peak minus the process's baseline) is held against quantbench.streaming.budget.

    PYTHONPATH=. python3 benchmarks/streaming_cpu_phases.py [--repeats 3] [--out benchmarks/results/streaming-cpu-phases.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = dict(
    model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=1024, intermediate_size=3584,
    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=128256,
    tie_word_embeddings=False, max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)

_JOB = r"""
import json, sys, torch
from pathlib import Path
torch.set_num_threads(2)
from quantbench.formats.compressed_tensors import quantization_config
from quantbench.methods.rtn import RTNConfig
from quantbench.streaming.intgrid import quantize_rtn_streaming
quantization_config(4, 128, torch.float16, [])  # import compressed-tensors before sampling starts
r = quantize_rtn_streaming(Path(sys.argv[1]), Path(sys.argv[2]), RTNConfig(4, 128, "float16"), "cpu")
print("RESULT " + json.dumps({**r.memory.as_dict(), "seconds": r.seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/streaming-cpu-phases.json"))
    args = parser.parse_args()

    import torch

    from quantbench.arch import ArchSpec
    from quantbench.streaming.budget import streaming_budget
    from quantbench.streaming.synthetic import write_random_checkpoint

    budget = streaming_budget("rtn", ArchSpec.from_config(CONFIG), "cpu", source_bytes=2, bits=4, group_size=128)
    planned = {phase: sum(terms.values()) for phase, terms in budget.host_phases.items()}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_random_checkpoint(CONFIG, Path(tmp) / "model", torch.bfloat16, max_shard_bytes=200 * 2**20)
        for k in range(args.repeats):
            out = Path(tmp) / f"out-{k}"
            proc = subprocess.run([sys.executable, "-c", _JOB, str(src), str(out)], capture_output=True, text=True, check=True)
            m = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT ")).removeprefix("RESULT "))
            work = {phase: peak - m["baseline_anon_bytes"] for phase, peak in m["phases"].items()}
            runs.append({"baseline_anon_bytes": m["baseline_anon_bytes"], "peak_work_bytes": m["anon_bytes"] - m["baseline_anon_bytes"],
                         "phase_work_bytes": work, "seconds": m["seconds"]})
            for phase, plan in planned.items():
                print(f"run {k}: {phase:62s} measured {work[phase] / 1e6:8.2f} MB  plan {plan / 1e6:8.2f} MB  "
                      f"ratio {work[phase] / plan:.3f}")
    result = {"what": "streaming RTN w4g128 on CPU: peak RssAnon above the process baseline, per plan phase",
              "config": CONFIG, "plan_phase_bytes": planned, "plan_lines": budget.lines(), "runs": runs,
              "machine": f"{platform.machine()} CPU, {platform.python_version()}, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "PYTHONPATH=. python3 benchmarks/streaming_cpu_phases.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

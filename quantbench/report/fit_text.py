"""What `quantbench fit` prints about the file it wrote: bytes, memory in llama.cpp term by term, the
tensor types, the predicted KLD and the llama.cpp command line."""

from __future__ import annotations


def fit_lines(report: dict) -> str:
    from quantbench.fit.budget import MemoryBreakdown, RuntimeSetting

    m = report["memory"]
    s = report["sensitivity"]
    lines = [f"wrote {report['artifact']}: {report['weights_bytes'] / 1e6:.2f} MB of tensors, "
             f"{report['bits_per_weight']:.3f} bits/weight (types and bytes checked against the plan)",
             f"memory in llama.cpp at --context {report['context']} (budget {report['budget_bytes'] / 1e6:.2f} MB):"]
    setting = RuntimeSetting(**m["setting"])
    lines += ["  " + line for line in MemoryBreakdown(m["weights"], m["kv_cache"], m["buffers"], setting, m["buffers_source"]).lines()]
    lines.append("tensor types: " + ", ".join(f"{t} x{n}" for t, n in sorted(report["tensor_types"].items())))
    lines.append(f"predicted mean KLD {report['predicted_kld']:.5f} (estimate vs direct rank correlation "
                 f"{s['spearman']:.2f} over {len(s['direct'])} direct measurements); plan from {report['plan_origin']}")
    lines.append(f"  of which llama.cpp's rounding of the activations (CPU backend): {s['activation_rounding']['plan']:.5f}")
    lines.append(f"run it with: llama-cli -m {report['artifact']} {report['llama_cpp_flags']}")
    lines.append(f"frontier: {report['artifact'].removesuffix('.gguf')}.frontier.json / .frontier.png")
    return "\n".join(lines)

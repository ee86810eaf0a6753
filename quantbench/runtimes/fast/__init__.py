"""The `quantbench` runtime: its own decoder over packed weights, one CUDA graph per decode step."""

from quantbench.runtimes.fast.runtime import NAME, FastRuntime, open_fast

__all__ = ["NAME", "FastRuntime", "open_fast"]

"""How quantized models are executed for measurement. One module per runtime, discovered: each
defines a `Runtime` subclass (runtimes/base.py) whose `name` recipes give as `Recipe.runtime`."""

from __future__ import annotations

import importlib
import pkgutil


def _discovered() -> dict:
    from quantbench.runtimes.base import Runtime

    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        importlib.import_module(info.name)
    found = {}
    pending = list(Runtime.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "name", None):
            found.setdefault(cls.name, cls)
    return found


def runtime_names() -> tuple[str, ...]:
    """Every runtime defined here, sorted: what `--runtime` accepts beside "auto"."""
    return tuple(sorted(_discovered()))


def runtime_class(name: str):
    """The Runtime subclass called `name` ("transformers", "llama.cpp", ...), from every module here."""
    from quantbench.errors import QuantbenchError

    found = _discovered()
    if name not in found:
        raise QuantbenchError(f"no runtime called '{name}'; runtimes: {', '.join(sorted(found))}")
    return found[name]

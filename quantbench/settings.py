"""What a measurement uses when the user says nothing: the defaults, defined once.

The API's functions, the CLI's flags (their defaults and help) and the planner's assumptions read
them from here, so a default changed here is changed everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantbench.errors import QuantbenchError
from quantbench.eval.perplexity import PerplexityProtocol


@dataclass(frozen=True)
class Settings:
    """What is measured and how; every field lands in the report's protocol section."""

    protocol: PerplexityProtocol = field(default_factory=PerplexityProtocol)
    calibration_fraction: float = 0.25  # first quarter of the text calibrates, the rest is scored
    calibration_samples: int = 32
    calibration_length: int = 512
    prompt_tokens: int = 128  # speed: prompt length for prefill
    new_tokens: int = 32  # speed: tokens decoded after the prompt
    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    measure_speed: bool = True
    # BOS before every perplexity window: None = the model's own convention (eval/bos.py: a GGUF
    # source's tokenizer.ggml.add_bos_token, else what its tokenizer does), True/False = --add-bos/--no-add-bos
    add_bos: bool | None = None
    runtime: str | None = None  # None: the device's default (recipes/open.py); or transformers, llama.cpp, quantbench
    # Per-device cap for the reference ({0: bytes, "cpu": bytes}, accelerate's max_memory): a model larger
    # than one GPU is split across GPUs and the CPU. None: the whole model on the device.
    max_memory: dict | None = None

    def __post_init__(self):
        if self.repeats < 1 or self.new_tokens < 1 or self.batch < 1:
            raise QuantbenchError("--repeats, --new-tokens and --batch must be at least 1")
        if self.calibration_samples < 1 or self.calibration_length < 1:
            raise QuantbenchError("--calibration-samples and --calibration-length must be at least 1")


DEFAULTS = Settings()

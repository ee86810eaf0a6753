"""Perplexity windows with a declared protocol.

Default protocol (GPTQ paper, Frantar et al. 2023, s.4 and their `datautils`/`opt_eval`): the token
stream is cut into non-overlapping windows of `window` tokens; inside each window every position
predicts the next token, so a window scores window-1 tokens. BOS is prepended (and the first token
scored too) exactly when the model's tokenizer adds it, as llama.cpp's perplexity tool does
(eval/bos.py), unless --add-bos/--no-add-bos say otherwise. The llama.cpp protocol
(`llama-perplexity`) is window 512 scoring only the second half: `score_from=window//2`.
PPL = exp(mean over scored tokens of -log p(token | prefix)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class PerplexityProtocol:
    window: int = 512
    max_windows: int = 4  # how many consecutive windows of the evaluation split to score
    score_from: int = 0  # first position inside a window whose next-token prediction is scored
    bos_token_id: int | None = None  # prepended to every window when set

    def __post_init__(self):
        if self.window < 2:
            raise QuantbenchError("perplexity window must be at least 2 tokens")
        if not 0 <= self.score_from < self.window - 1:
            raise QuantbenchError("score_from must be in [0, window-1)")
        if self.bos_token_id is not None and self.bos_token_id < 0:
            raise QuantbenchError("bos_token_id must be a token id")
        if self.max_windows < 1:
            raise QuantbenchError("need at least one window")

    def describe(self) -> dict:
        d = asdict(self)
        d["stride"] = self.window
        d["scored_per_window"] = self.window - 1 - self.score_from + (1 if self.bos_token_id is not None else 0)
        d["name"] = "non-overlapping windows, next-token log-likelihood"
        return d


@dataclass(frozen=True)
class Window:
    input_ids: list[int]  # fed to the model
    targets: list[int]  # the tokens that are scored
    first_scored: int  # position in input_ids whose logits predict targets[0]


def make_windows(ids: list[int], protocol: PerplexityProtocol) -> list[Window]:
    """Non-overlapping windows from the start of `ids`; a text shorter than one window is an error."""
    w = protocol.window
    if len(ids) < w:
        raise QuantbenchError(
            f"evaluation text has {len(ids)} tokens, fewer than one window of {w}; give a longer text or a smaller --window"
        )
    count = min(protocol.max_windows, len(ids) // w)
    windows = []
    for k in range(count):
        chunk = ids[k * w : (k + 1) * w]
        if protocol.bos_token_id is not None:
            inputs = [protocol.bos_token_id] + chunk[:-1]
            first = protocol.score_from
            targets = chunk[first:]
        else:
            inputs = chunk[:-1]
            first = protocol.score_from
            targets = chunk[first + 1 :]
        windows.append(Window(inputs, targets, first))
    return windows


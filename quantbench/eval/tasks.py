"""Multiple-choice task accuracy by log-likelihood, from a user's JSONL file.

Each line: {"context": "...", "choices": ["...", ...], "answer": <index>} ("question" is accepted for
"context"). A choice's score is the sum of log p(choice tokens | context tokens), as in lm-eval's
`multiple_choice` output type (acc); acc_norm divides by the choice's length in characters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from quantbench.errors import QuantbenchError
from quantbench.eval.metrics import register_runtime_metric


def load_tasks(path: Path, tokenizer) -> list[dict]:
    """Tokenize once in the parent so every runtime scores the very same ids."""
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise QuantbenchError(f"task file {path}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            context = item.get("context", item.get("question"))
            choices, answer = item["choices"], int(item["answer"])
            if context is None or not 0 <= answer < len(choices):
                raise ValueError("needs context/question, choices and a valid answer index")
        except (ValueError, KeyError, TypeError) as exc:
            raise QuantbenchError(f"{path}:{n}: bad task line ({exc}); expected {{\"context\", \"choices\", \"answer\"}}") from None
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        if not ctx_ids:
            raise QuantbenchError(f"{path}:{n}: empty context; each item needs a context to condition on")
        choice_ids = [tokenizer(" " + c.lstrip(), add_special_tokens=False)["input_ids"] for c in choices]
        items.append({"context_ids": ctx_ids, "choice_ids": choice_ids, "choice_chars": [len(c) for c in choices], "answer": answer})
    if not items:
        raise QuantbenchError(f"task file {path} has no items")
    return items


def choice_loglik(runtime, context_ids: list[int], choice_ids: list[int]) -> float:
    ids = context_ids + choice_ids
    logprobs = torch.log_softmax(runtime.logits(ids).double(), -1)
    start = len(context_ids)
    return float(sum(logprobs[start - 1 + i, t] for i, t in enumerate(choice_ids)))


# Metrics key of the per-item correctness (paired differences between methods; not written into rows).
PER_ITEM = "per_item"


def task_accuracy(runtime, items: list[dict]) -> dict:
    """acc and acc_norm; acc with its Wilson 95% interval (8 items span about +/-30 points), and the
    per-item correctness under PER_ITEM for paired comparisons between methods on the same items."""
    from quantbench.eval.uncertainty import accuracy_interval

    correct, correct_norm = [], []
    for item in items:
        scores = [choice_loglik(runtime, item["context_ids"], c) for c in item["choice_ids"]]
        normed = [s / n for s, n in zip(scores, item["choice_chars"])]
        correct.append(int(max(range(len(scores)), key=scores.__getitem__) == item["answer"]))
        correct_norm.append(int(max(range(len(normed)), key=normed.__getitem__) == item["answer"]))
    return {"task_acc": sum(correct) / len(items), "task_acc_norm": sum(correct_norm) / len(items), "task_items": len(items),
            "task_acc_interval": accuracy_interval(sum(correct), len(items)).to_dict(), PER_ITEM: {"task": [correct]}}


register_runtime_metric("tasks", "scoring", lambda runtime, job: task_accuracy(runtime, list(job.tasks)) if job.tasks else {})

"""A multiple-choice task file built from a text, for `quantbench compare --tasks` when no task set is
at hand offline (the hubs are unreachable here).

Each item: a sentence from the text with its last WORDS words cut off as the context; the choices are
that true ending and the endings of DISTRACTORS other sentences, in a seeded random order. A model
that follows the text prefers the true ending; chance is 1 / (DISTRACTORS + 1). This is a cloze task
made here, not a published benchmark: read its accuracy as "does quantization change which
continuation the model prefers", not as a score to compare with papers.

    PYTHONPATH=. python3 benchmarks/cloze_tasks.py --items 40 --out /tmp/cloze.jsonl [--text FILE]

The default text is the built-in Wikipedia excerpt (CC BY-SA, read from its package at run time): the
file is written where you say and is not committed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

WORDS = 4
DISTRACTORS = 3


def sentences(text: str) -> list[list[str]]:
    """Plain sentences of 12 to 40 words, no markup left, in text order."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = s.split()
        if 12 <= len(words) <= 40 and s[0].isupper() and not re.search(r"[|=\[\]{}<>&]", s):
            out.append(words)
    return out


def make_items(text: str, items: int, seed: int) -> list[dict]:
    pool = sentences(text)
    if len(pool) < items * (DISTRACTORS + 1):
        raise SystemExit(f"the text has {len(pool)} usable sentences, too few for {items} items")
    rng = random.Random(seed)
    picked = rng.sample(pool, items * (DISTRACTORS + 1))
    out = []
    for k in range(items):
        group = picked[k * (DISTRACTORS + 1) : (k + 1) * (DISTRACTORS + 1)]
        endings = [" " + " ".join(s[-WORDS:]) for s in group]
        order = list(range(len(group)))
        rng.shuffle(order)
        out.append({"context": " ".join(group[0][:-WORDS]), "choices": [endings[i] for i in order], "answer": order.index(0)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", default=None, help="a text file (default: the built-in Wikipedia excerpt)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from quantbench.sources.text import load_text

    items = make_items(load_text(args.text).content, args.items, args.seed)
    args.out.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"{len(items)} items -> {args.out}")


if __name__ == "__main__":
    main()

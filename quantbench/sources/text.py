"""Text for calibration and evaluation: the user's file or a built-in offline default.

The token stream is split deterministically: the first `calibration_fraction` of the tokens is the
calibration split (GPTQ, AWQ, imatrix read it), the rest is the evaluation split (everything is
scored on it). The two never overlap.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError

DEFAULT_TEXT = "enwiki-gensim"
_WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass(frozen=True)
class Text:
    name: str
    content: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()[:16]


def load_text(spec: str | None = None) -> Text:
    if spec is None or spec == DEFAULT_TEXT:
        return Text(DEFAULT_TEXT, default_wikipedia_text())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise QuantbenchError(f"text file '{spec}' not found")
    try:
        return Text(path.name, path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantbenchError(f"{spec}: cannot read as UTF-8 text ({exc})") from None


def default_wikipedia_text() -> str:
    """101 Wikipedia articles (CC BY-SA) shipped in the gensim wheel, markup stripped to prose."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise QuantbenchError("the built-in default text needs gensim's data: pip install --no-deps gensim==4.4.0, or pass --text FILE")
    path = Path(list(spec.submodule_search_locations)[0]) / _WIKI_FILE
    xml = bz2.decompress(path.read_bytes()).decode("utf-8")
    articles = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)
    return "\n\n".join(p for p in (strip_wiki_markup(a) for a in articles) if p)


def strip_wiki_markup(raw: str) -> str:
    import html

    text = html.unescape(raw)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for _ in range(3):  # templates and tables nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^[*#:;|!].*$", "", text, flags=re.M)
    text = re.sub(r"^=+\s*(.*?)\s*=+$", r"\1", text, flags=re.M)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


@dataclass(frozen=True)
class Splits:
    calibration: list[int]
    evaluation: list[int]


def split_tokens(ids: list[int], calibration_fraction: float = 0.25) -> Splits:
    """Deterministic, disjoint: the first part calibrates, the rest is scored."""
    if not 0.0 <= calibration_fraction < 1.0:
        raise QuantbenchError("calibration fraction must be in [0, 1)")
    cut = int(len(ids) * calibration_fraction)
    return Splits(ids[:cut], ids[cut:])


def calibration_samples(ids: list[int], samples: int, length: int) -> list[list[int]]:
    """`samples` consecutive, non-overlapping segments of `length` tokens from the calibration split."""
    if len(ids) < length:
        raise QuantbenchError(
            f"calibration split has {len(ids)} tokens, fewer than one sample of {length}; give a longer text"
        )
    count = min(samples, len(ids) // length)
    return [ids[i * length : (i + 1) * length] for i in range(count)]

"""length: keep documents whose size lies in [min, max] characters, words or tokens' worth.

"tokens" is an estimate without a tokenizer (lmforge.data.text.estimate_tokens): one token per
CJK character, one per four other characters; "words" counts each CJK character as a word.
"""

from __future__ import annotations

from lmforge.data.config import LengthConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Filter
from lmforge.data.text import estimate_tokens, split_words


def measure(text: str, unit: str) -> int:
    """Size of `text` in `unit` ("chars", "words" or "tokens")."""
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(split_words(text))
    return estimate_tokens(text)


class Length(Filter):
    name = "length"

    def __init__(self, cfg: LengthConfig) -> None:
        self.cfg = cfg

    def check(self, doc: Doc) -> tuple[str, str] | None:
        size = measure(doc.text, self.cfg.unit)
        if self.cfg.min is not None and size < self.cfg.min:
            return "too_short", f"{size} < {self.cfg.min} {self.cfg.unit}"
        if self.cfg.max is not None and size > self.cfg.max:
            return "too_long", f"{size} > {self.cfg.max} {self.cfg.unit}"
        return None

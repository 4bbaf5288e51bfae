"""The C4 rules (Raffel et al. 2020 §2.2; reference code TFDS text/c4_utils.py `clean_page`).

Line edits and page drops, in TFDS order, on each stripped line: a line with a word longer than
`max_word_length` goes; citation markers ([1], [edit], [citation needed]) are cut; a line that
does not end in a terminal mark (or ends in "...") goes; a line with fewer than
`min_words_per_line` words goes; "lorem ipsum" drops the page; a line with "javascript" goes;
"{" drops the page; a line with a cookie/terms policy phrase goes. A page left with fewer than
`min_sentences` sentences is dropped. Page rules only look at lines that survived the line
rules before them, as in TFDS.

With `unit: paragraph` the rules judge each blank-line-separated paragraph with its hard line
breaks joined (books, docs and mail wrap lines at ~70 characters, and C4's per-line rules would
keep only the last line of every paragraph); a kept paragraph keeps its own line breaks.

CJK: terminal marks include 。！？ and the closing quotes ” 」 』; each CJK character is a word
(other words are whitespace tokens, as TFDS's `line.split()`, less CJK punctuation);
sentences end at 。！？ without a following space. Sentences are counted by end marks (TFDS
uses the NLTK punkt model; lmforge ships no model). Unlike TFDS, blank lines between kept
lines stay, so paragraphs survive the edit.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from lmforge.data.config import C4Config
from lmforge.data.text import count_sentences, count_words

END_MARKS = (".", "?", "!", '"', "。", "！", "？", "”", "」", "』")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")


@dataclass
class C4Outcome:
    """The cleaned text, or the reason the page goes; and the lines (or paragraphs) removed,
    by reason."""

    text: str
    drop: tuple[str, str] | None = None
    removed_lines: Counter[str] = field(default_factory=Counter)


class C4Rules:
    def __init__(self, cfg: C4Config) -> None:
        self.cfg = cfg

    def apply(self, text: str) -> C4Outcome:
        cfg = self.cfg
        paragraphs = cfg.unit == "paragraph"
        removed: Counter[str] = Counter()
        kept: list[str] = []
        sentences = 0
        for original in PARAGRAPH_RE.split(text) if paragraphs else text.split("\n"):
            line = " ".join(original.split()) if paragraphs else original.strip()
            if not line:
                if not paragraphs and kept and kept[-1]:
                    kept.append("")
                continue
            if self._has_too_long_word(line):
                removed["too_long_word"] += 1
                continue
            if cfg.remove_citations and "[" in line:
                line = CITATION_RE.sub("", line).strip()
                original = CITATION_RE.sub("", original)
            reason = self._line_reason(line)
            if reason is not None:
                removed[reason] += 1
                continue
            lower = line.lower()
            if cfg.drop_lorem_ipsum and "lorem ipsum" in lower:
                return C4Outcome(text, ("c4.lorem_ipsum", f"line: {line[:80]!r}"), removed)
            if cfg.drop_javascript_lines and "javascript" in lower:
                removed["javascript"] += 1
                continue
            if cfg.drop_curly_brace and "{" in line:
                return C4Outcome(text, ("c4.curly_brace", f"line: {line[:80]!r}"), removed)
            if cfg.drop_policy_lines and any(p in lower for p in POLICY_SUBSTRINGS):
                removed["policy"] += 1
                continue
            sentences += count_sentences(line)
            kept.append(original.strip("\n") if paragraphs else line)
        if sentences < cfg.min_sentences:
            detail = (
                f"{sentences} < {cfg.min_sentences} sentences "
                f"after removing {sum(removed.values())} {cfg.unit}s"
            )
            return C4Outcome(text, ("c4.too_few_sentences", detail), removed)
        joiner = "\n\n" if paragraphs else "\n"
        return C4Outcome(joiner.join(kept).strip("\n"), None, removed)

    def _has_too_long_word(self, line: str) -> bool:
        limit = self.cfg.max_word_length
        return len(line) > limit and any(len(word) > limit for word in line.split())

    def _line_reason(self, line: str) -> str | None:
        cfg = self.cfg
        if cfg.drop_lines_without_terminal_punct and (
            not line.endswith(END_MARKS) or line.endswith(ELLIPSIS)
        ):
            return "no_terminal_punct"
        if cfg.min_words_per_line > 0 and count_words(line) < cfg.min_words_per_line:
            return "too_few_words"
        return None

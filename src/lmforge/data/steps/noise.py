"""noise: drop documents that are mostly debris: lost bytes, symbol soup, invisible characters.

Ratios are over non-whitespace characters. A "symbol" is any character that is neither a word
character (letters and digits of every script, "_") nor whitespace: punctuation, math, currency,
emoji. A line made of one repeated character ("=====", "-----": heading underlines and rules)
is formatting: it counts neither as symbols nor as a punctuation run.
"""

from __future__ import annotations

import re

from lmforge.data.config import NoiseConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Filter
from lmforge.errors import UserError

_SYMBOL_RUN_RE = re.compile(r"[^\w\s]+")
_RULE_LINE_RE = re.compile(r"^[ \t]*(([^\w\s])\2+)[ \t]*$", re.MULTILINE)
# Zero-width joiners are part of emoji and Indic/Persian spelling: printable for our purpose.
_JOINERS = str.maketrans("", "", "\u200c\u200d")


def compile_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    """Compile the user's drop patterns once; a bad one is a UserError naming it."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise UserError(
                f"data.noise.drop_patterns: {pattern!r} is not a valid regular expression "
                f"({error}); fix it, or escape literal ( [ . * + with a backslash"
            ) from error
    return compiled


def longest_symbol_run(text: str, at_least: int = 1) -> int:
    """Length of the longest punctuation/symbol run that is not a whole-line rule (runs shorter
    than `at_least` are not looked at; 0 when none is left)."""
    longest = 0
    for match in _SYMBOL_RUN_RE.finditer(text):
        run = match.group()
        if len(run) < at_least or len(run) <= longest:
            continue
        line_start = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.end())
        line = text[line_start : line_end if line_end >= 0 else len(text)].strip()
        if line == run and len(set(run)) == 1:
            continue
        longest = len(run)
    return longest


def nonprintable_count(visible: str) -> int:
    """Characters Python deems unprintable (controls, format, private use, unassigned)."""
    if visible.isprintable():
        return 0
    return sum(1 for char in visible.translate(_JOINERS) if not char.isprintable())


class Noise(Filter):
    name = "noise"

    def __init__(self, cfg: NoiseConfig) -> None:
        self.cfg = cfg
        self.patterns = compile_patterns(cfg.drop_patterns)

    def check(self, doc: Doc) -> tuple[str, str] | None:
        text = doc.text
        visible = "".join(text.split())
        if not visible:
            return None
        n = len(visible)
        cfg = self.cfg
        replacement = visible.count("\ufffd") / n
        if replacement > cfg.max_replacement_ratio:
            return "replacement_chars", f"{replacement:.3f} > {cfg.max_replacement_ratio:.3f}"
        nonprintable = nonprintable_count(visible) / n
        if nonprintable > cfg.max_nonprintable_ratio:
            return "nonprintable", f"{nonprintable:.3f} > {cfg.max_nonprintable_ratio:.3f}"
        runs = [len(run) for run in _SYMBOL_RUN_RE.findall(text)]
        symbols = sum(runs) / n
        if symbols > cfg.max_symbol_ratio:
            rules = sum(len(m.group(1)) for m in _RULE_LINE_RE.finditer(text))
            symbols = (sum(runs) - rules) / (n - rules) if n > rules else 0.0
            if symbols > cfg.max_symbol_ratio:
                return "symbol_ratio", f"{symbols:.3f} > {cfg.max_symbol_ratio:.3f}"
        limit = cfg.max_punctuation_run
        if runs and max(runs) > limit:
            run = longest_symbol_run(text, at_least=limit + 1)
            if run > limit:
                return "punctuation_run", f"{run} > {limit} characters"
        for pattern in self.patterns:
            match = pattern.search(text)
            if match:
                return "pattern", f"{pattern.pattern!r} matched {match.group()[:80]!r}"
        return None

"""Blocklists: find the terms of the user's word lists in text (data cleaning and serving).

    blocklist = Blocklist.from_files(["badwords.txt"])
    blocklist.find(text) -> [BlockMatch(start, end, term)]; blocklist.redact(text) -> (text, n)

List files: UTF-8, one word or phrase per line, "#" starts a comment, blank lines ignored.
Terms in spaced scripts match whole words, case-insensitively ("ass" does not match "class";
"bad  word" in the text matches the phrase "bad word"; a Han character next to the term is a
boundary, so "这是badword吗" matches "badword"); terms with a CJK character match as substrings,
since Chinese and Japanese do not separate words. All terms compile into one regex factored
by common prefixes, so a list of thousands of terms stays fast; a document without CJK text
and without the first word of any term skips the regex altogether. `find(text, start)` scans
from `start` with the text before it as context, and `horizon()` tracks how much of a growing
text is settled (lmforge.text.settle: a match lies within the last few words).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import UserError
from lmforge.text.cjk import CJK_CHAR_RE, CJK_RANGES, has_cjk
from lmforge.text.settle import Latest, PatternHorizon, WordHorizon

PLACEHOLDER = "[BLOCKED]"
_WORD_RE = re.compile(r"\w+")
_SPACED_WORD_CHAR = rf"(?:(?![{CJK_RANGES}])\w)"  # a word character that is not CJK


@dataclass(frozen=True, slots=True)
class BlockMatch:
    start: int
    end: int
    term: str


def read_terms(path: Path, key: str = "data.blocklist.files") -> list[str]:
    """Terms of one list file; a missing or undecodable file is a UserError naming `key`."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{key}: no such file {str(path)!r}; fix the path or remove it") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"{key}: {str(path)!r} is not UTF-8 (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise UserError(f"{key}: cannot read {str(path)!r} ({error.strerror})") from None
    terms = []
    for line in raw.splitlines():
        term = line.split("#", 1)[0].strip()
        if term:
            terms.append(" ".join(term.split()))
    return terms


def trie_pattern(terms: Iterable[str]) -> str:
    """One regex for many literal terms, factored by common prefixes ("ab(?:c|d)"): the regex
    engine tries a branch per distinct next character instead of one per term. A space in a
    term matches any run of whitespace; a longer term wins over its prefix."""
    trie: dict[str, dict] = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_pattern(trie)


def _node_pattern(node: dict[str, dict]) -> str:
    branches = [
        (r"\s+" if char == " " else re.escape(char)) + _node_pattern(child)
        for char, child in sorted(node.items())
        if char
    ]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a term ends here: the rest is optional
        return f"(?:{body})?"
    return body


class Blocklist:
    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = sorted({" ".join(t.lower().split()) for t in terms if t.strip()})
        cjk = [t for t in self.terms if CJK_CHAR_RE.search(t)]
        spaced = [t for t in self.terms if not CJK_CHAR_RE.search(t)]
        # A text must hold a spaced term's first word for the term to match: a cheap check.
        self.first_words = frozenset(_WORD_RE.findall(t)[0] for t in spaced if _WORD_RE.search(t))
        self.needs_scan = any(not _WORD_RE.search(t) for t in spaced)
        self.has_cjk_terms = bool(cjk)
        alternatives = []
        if spaced:
            boundary = _SPACED_WORD_CHAR
            alternatives.append(rf"(?<!{boundary}){trie_pattern(spaced)}(?!{boundary})")
        if cjk:
            alternatives.append(trie_pattern(cjk))
        self.pattern = re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], key: str = "data.blocklist.files"
                   ) -> Blocklist:
        """The terms of every list file; a bad file is a UserError naming the config `key`."""
        return cls(term for path in paths for term in read_terms(Path(path), key))

    def __bool__(self) -> bool:
        return self.pattern is not None

    def _may_match(self, text: str) -> bool:
        if self.needs_scan:
            return True
        if has_cjk(text):
            if self.has_cjk_terms:
                return True
            text = CJK_CHAR_RE.sub(" ", text)
        return not self.first_words.isdisjoint(_WORD_RE.findall(text.lower()))

    def find(self, text: str, start: int = 0) -> list[BlockMatch]:
        """Every match at or after `start` in text order (longest term first where several
        start at one place)."""
        if self.pattern is None or not self._may_match(text[start:]):
            return []
        return [
            BlockMatch(m.start(), m.end(), " ".join(m.group().lower().split()))
            for m in self.pattern.finditer(text, start)
        ]

    def horizon(self) -> Latest:
        """A tracker of the settled prefix of a growing text (needs a non-empty list)."""
        words = max(len(t.split()) for t in self.terms)
        return Latest([PatternHorizon(self.pattern), WordHorizon(words)])

    def redact(self, text: str) -> tuple[str, int]:
        """Text with every match replaced by [BLOCKED], and the number replaced."""
        matches = self.find(text)
        return replace_matches(text, matches), len(matches)


def replace_matches(text: str, matches: list[BlockMatch]) -> str:
    pieces = []
    position = 0
    for match in matches:
        pieces.append(text[position : match.start])
        pieces.append(PLACEHOLDER)
        position = match.end
    pieces.append(text[position:])
    return "".join(pieces)

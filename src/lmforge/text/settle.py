"""How much of a growing text no continuation can change, for a set of regexes.

A streamed reply is redacted as it arrives, so the redactor needs the longest prefix whose
matches are final whatever text comes next: the "settled" prefix. For a regex it follows from
facts read off the pattern's parse tree (the standard library's own `re` parser):

- its alphabet: every character a match can consume (lookarounds read context, they consume
  nothing). A character outside the alphabet, a barrier, is never inside a match, so a match
  attempt that starts before a barrier ends before it;
- its reach: how many characters past a match its lookaheads read. Once `reach` characters
  follow a barrier, every attempt that starts at or before it is decided;
- its lookbehind: how many characters before a match its lookbehinds read (a scan that starts
  part-way through a text needs that much of what precedes);
- its width: the longest match. When it is bounded, an attempt that starts `width + reach`
  characters before the end is decided too, barrier or not (a long run of digits settles).

Everything before the last decided barrier, or before the width bound, is settled. Trackers
are incremental (each character is examined once) because they run on every streamed token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from re import _constants as sre  # the stdlib parser's opcodes (stable since Python 3.11)
from re import _parser as sre_parse
from typing import Protocol

_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}


def _char(code: int) -> str:
    return f"\\U{code:08x}"


@dataclass
class _Reads:
    """What a pattern reads: characters it consumes (`members` of one character class, plus
    `atoms` that are classes of their own) and how far its lookarounds read."""

    members: set[str] = field(default_factory=set)
    atoms: set[str] = field(default_factory=set)
    ahead: int = 0
    behind: int = 0

    def any_of(self) -> str:
        """A regex for one character that one of these can consume."""
        members = "".join(sorted(self.members))
        return "|".join(sorted(self.atoms) + ([f"[{members}]"] if members else [])) or "(?!)"

    def none_of(self) -> str:
        """A regex for one character that none of these can consume."""
        if not self.atoms:
            return f"[^{''.join(sorted(self.members))}]" if self.members else "(?s:.)"
        return f"(?s:(?!(?:{self.any_of()})).)"


def _class_items(items: list, reads: _Reads) -> None:
    parts, negated = [], False
    for op, av in items:
        if op is sre.NEGATE:
            negated = True
        elif op is sre.LITERAL:
            parts.append(_char(av))
        elif op is sre.RANGE:
            parts.append(f"{_char(av[0])}-{_char(av[1])}")
        elif op is sre.CATEGORY:
            parts.append(_CATEGORIES[av])
        else:
            raise ValueError(f"unsupported character class item {op}")
    if negated:
        reads.atoms.add("[^" + "".join(parts) + "]")
    else:
        reads.members.update(parts)


def _consume(op, av, reads: _Reads) -> bool:
    """Add a one-character item to `reads`; False if `op` is not one."""
    if op is sre.LITERAL:
        reads.members.add(_char(av))
    elif op is sre.NOT_LITERAL:
        reads.atoms.add(f"[^{_char(av)}]")
    elif op is sre.IN:
        _class_items(av, reads)
    elif op is sre.ANY:
        reads.atoms.add("(?s:.)")
    else:
        return False
    return True


def _first(items, reads: _Reads) -> bool:
    """Collect the characters a match of `items` can begin with; True if it can be empty."""
    for op, av in items:
        if _consume(op, av, reads):
            return False
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            empty = _first(av[2], reads) or av[0] == 0
        elif op is sre.SUBPATTERN:
            empty = _first(av[3], reads)
        elif op is sre.ATOMIC_GROUP:
            empty = _first(av, reads)
        elif op is sre.BRANCH:
            empty = any([_first(branch, reads) for branch in av[1]])
        elif op is sre.GROUPREF_EXISTS:
            empty = any([branch is None or _first(branch, reads) for branch in av[1:]])
        else:  # lookarounds, anchors, backreferences (to text a match already consumed)
            empty = True
        if not empty:
            return False
    return True


def _walk(items, reads: _Reads) -> None:
    """Collect what `items` can consume and how far their lookarounds read."""
    for op, av in items:
        if _consume(op, av, reads):
            continue
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            _walk(av[2], reads)
        elif op is sre.SUBPATTERN:
            _walk(av[3], reads)
        elif op is sre.ATOMIC_GROUP:
            _walk(av, reads)
        elif op is sre.BRANCH:
            for branch in av[1]:
                _walk(branch, reads)
        elif op is sre.GROUPREF_EXISTS:
            for branch in av[1:]:
                if branch is not None:
                    _walk(branch, reads)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            direction, sub = av
            nested = _Reads()
            _walk(sub, nested)  # lookarounds inside a lookaround read further
            width = sub.getwidth()[1]
            if direction > 0:
                reads.ahead = max(reads.ahead, width + nested.ahead)
            else:
                reads.behind = max(reads.behind, width + nested.behind)
        elif op not in (sre.AT, sre.GROUPREF):  # anchors; a backreference repeats consumed text
            raise ValueError(f"unsupported regex construct {op}")


@dataclass(frozen=True)
class MatchShape:
    barrier: re.Pattern[str]  # one character that no match can consume
    starter: re.Pattern[str]  # one character that a match can begin with
    reach: int  # characters a lookahead reads past the match
    behind: int  # characters a lookbehind reads before the match
    width: int | None  # the longest match, None when unbounded

    @staticmethod
    @cache
    def of(pattern: re.Pattern[str]) -> MatchShape:
        tree = sre_parse.parse(pattern.pattern, pattern.flags)
        shortest, longest = tree.getwidth()
        if shortest == 0:
            raise ValueError(f"pattern {pattern.pattern!r} can match empty text")
        reads, first = _Reads(), _Reads()
        _walk(tree, reads)
        _first(tree, first)
        flags = pattern.flags & ~re.VERBOSE
        return MatchShape(re.compile(reads.none_of(), flags), re.compile(first.any_of(), flags),
                          reads.ahead, reads.behind, None if longest >= sre.MAXREPEAT else longest)


class Horizon(Protocol):
    def advance(self, text: str) -> int:
        """Where the settled prefix of `text` ends; `text` only grows between calls."""


class PatternHorizon:
    """The settled prefix for one regex: attempts that start before its last decided barrier
    (or its width bound) are decided, and so are attempts at characters no match begins
    with; it ends at the first character after those that could begin a match."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.shape = MatchShape.of(pattern)
        self.barrier_end = 0  # one past the last decided barrier
        self.scanned = 0  # positions before this were examined for barriers
        self.starter: int | None = None  # the first possible match start at or after `lo`
        self.looked = 0  # no possible match start in [lo, looked) when `starter` is None

    def advance(self, text: str) -> int:
        shape = self.shape
        limit = len(text) + 1 - max(1, shape.reach)  # barriers before this are decided
        if limit > self.scanned:
            for match in shape.barrier.finditer(text, self.scanned, limit):
                self.barrier_end = match.end()
            self.scanned = limit
        lo = self.barrier_end
        if shape.width is not None:
            lo = max(lo, len(text) + 1 - shape.width - shape.reach)
        if self.starter is not None and self.starter < lo:
            self.starter, self.looked = None, lo
        if self.starter is None:
            match = shape.starter.search(text, max(self.looked, lo))
            if match is None:
                self.looked = len(text)
                return len(text)
            self.starter = match.start()
        return self.starter


class WordHorizon:
    """Matches of at most `words` whitespace-separated words, each inside one word of the
    text: everything before the last `words` words is settled (the last `words - 1` and the
    trailing space when the text ends in a space: a phrase may still continue)."""

    _WORD_START = re.compile(r"(?<!\S)\S")

    def __init__(self, words: int) -> None:
        self.words = words
        self.starts: list[int] = []
        self.scanned = 0

    def advance(self, text: str) -> int:
        for match in self._WORD_START.finditer(text, self.scanned):
            self.starts.append(match.start())
        self.scanned = len(text)
        del self.starts[:-self.words]  # only the last few matter
        if not text:
            return 0
        keep = self.words if not text[-1].isspace() else self.words - 1
        if keep == 0:
            return len(text)
        return self.starts[-keep] if len(self.starts) >= keep else 0


class Earliest:
    """The settled prefix of several rule sets together: the shortest of theirs."""

    def __init__(self, horizons: list[Horizon]) -> None:
        self.horizons = horizons

    def advance(self, text: str) -> int:
        return min((h.advance(text) for h in self.horizons), default=len(text))


class Latest:
    """Two sound bounds for one rule set: the longer settled prefix holds."""

    def __init__(self, horizons: list[Horizon]) -> None:
        self.horizons = horizons

    def advance(self, text: str) -> int:
        return max(h.advance(text) for h in self.horizons)

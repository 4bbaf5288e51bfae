"""Safety filters: reject bad prompts (400 naming the rule), redact replies.

Input: the user's blocklist and prompt-injection patterns (built-in ones plus any from the
config) are checked against what the client wrote (message contents, prompt text), never
against the chat template's own markup. Output: PII and blocklisted terms are replaced by
placeholders ([EMAIL], [PHONE], [BLOCKED], ...), using the data stage's `PIIRedactor` and
`Blocklist` so serving and training data agree on what counts.

A streamed reply is redacted as it goes, holding back only what could still grow into a
match: the trailing run of characters that PII is made of (an e-mail address or a phone
number arriving over several tokens), the last few words when a blocklisted phrase has
several, and never more than `holdback_chars`. Released text never cuts through a match.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from lmforge.data.steps.blocklist import PLACEHOLDER, Blocklist
from lmforge.data.steps.pii import PLACEHOLDERS, PIIRedactor
from lmforge.errors import UserError
from lmforge.serve.config import InputFilterConfig, OutputFilterConfig

INJECTION_PATTERNS = {
    "ignore-instructions": r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}?"
                           r"\b(?:previous|prior|above|earlier|preceding|all|your)\b[^.\n]{0,30}?"
                           r"\b(?:instructions?|prompts?|rules|directions|guidelines)\b",
    "reveal-system-prompt": r"\b(?:reveal|show|print|repeat|leak|output|tell me)\b[^.\n]{0,30}?"
                            r"\b(?:system|hidden|initial|secret)\s+(?:prompt|instructions?|message)",
    "jailbreak-persona": r"\b(?:you are now|act as|pretend to be)\b[^.\n]{0,30}?"
                         r"\b(?:DAN|jailbroken|unrestricted|unfiltered|evil)\b"
                         r"|\b(?:developer|DAN|jailbreak|god)\s+mode\b",
    "chat-role-tokens": r"<\|(?:system|user|assistant|end|bos|eos|pad)\|>",
}


@dataclass(frozen=True)
class Rejection:
    rule: str
    excerpt: str

    @property
    def message(self) -> str:
        return (f"the input was rejected by safety rule {self.rule!r} "
                f"(matched {self.excerpt!r}); rephrase the request")


class InputFilter:
    def __init__(self, cfg: InputFilterConfig) -> None:
        self.blocklist = Blocklist.from_files(cfg.blocklist)
        patterns = dict(INJECTION_PATTERNS) if cfg.injection else {}
        patterns.update(cfg.patterns)
        self.rules: list[tuple[str, re.Pattern[str]]] = []
        for name, pattern in patterns.items():
            try:
                self.rules.append((name, re.compile(pattern, re.IGNORECASE)))
            except re.error as e:
                raise UserError(f"serve.safety.input.patterns.{name} is not a valid regex "
                                f"({e}); fix the pattern") from None

    def check(self, texts: list[str]) -> Rejection | None:
        """The first rule a text breaks, or None."""
        for text in texts:
            if self.blocklist:
                found = self.blocklist.find(text)
                if found:
                    return Rejection("blocklist", text[found[0].start:found[0].end])
            for name, pattern in self.rules:
                match = pattern.search(text)
                if match:
                    return Rejection(name, match.group()[:80])
        return None


PII_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+@()-")
GROUP_END = frozenset("0123456789)")
GROUP_START = frozenset("0123456789(+")


def tail_start(text: str, extra_words: int) -> int:
    """Where the tail that may still become part of a match begins."""
    i = len(text)
    while i > 0:
        c = text[i - 1]
        if c in PII_CHARS:
            i -= 1
        elif (c == " " and i >= 2 and text[i - 2] in GROUP_END
              and (i == len(text) or text[i] in GROUP_START)):
            i -= 1  # a space inside a number written in groups: "415 555 2671"
        else:
            break
    for _ in range(extra_words):
        while i > 0 and text[i - 1].isspace():
            i -= 1
        while i > 0 and not text[i - 1].isspace():
            i -= 1
    return i


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: str
    placeholder: str


class OutputFilter:
    def __init__(self, cfg: OutputFilterConfig) -> None:
        self.pii = PIIRedactor(cfg.pii) if cfg.pii else None
        self.blocklist = Blocklist.from_files(cfg.blocklist)
        self.holdback = cfg.holdback_chars
        self.phrase_words = max((len(t.split()) for t in self.blocklist.terms), default=1) - 1

    @property
    def active(self) -> bool:
        return self.pii is not None or bool(self.blocklist)

    def spans(self, text: str) -> list[_Span]:
        """Non-overlapping matches in text order; PII first, then blocklisted terms."""
        found = [_Span(m.start, m.end, m.kind, PLACEHOLDERS[m.kind])
                 for m in (self.pii.find(text) if self.pii else [])]
        if self.blocklist:
            for m in self.blocklist.find(text):
                if all(m.end <= s.start or m.start >= s.end for s in found):
                    found.append(_Span(m.start, m.end, "blocklist", PLACEHOLDER))
        return sorted(found, key=lambda s: s.start)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        redactor = self.stream()
        out = redactor.push(text) + redactor.finish()
        return out, redactor.counts


class StreamRedactor:
    """Redacts text that arrives in pieces; `counts` holds what was replaced, by kind."""

    def __init__(self, rules: OutputFilter) -> None:
        self.rules = rules
        self.raw = ""
        self.released = 0
        self.counts: Counter[str] = Counter()

    def push(self, text: str) -> str:
        self.raw += text
        if not self.rules.active:
            return self._plain(len(self.raw))
        cut = max(tail_start(self.raw, self.rules.phrase_words),
                  len(self.raw) - self.rules.holdback)
        return self._release(cut)

    def finish(self) -> str:
        if not self.rules.active:
            return self._plain(len(self.raw))
        return self._release(len(self.raw))

    def _plain(self, end: int) -> str:
        out = self.raw[self.released:end]
        self.released = end
        return out

    def _release(self, cut: int) -> str:
        if cut <= self.released:
            return ""
        base = max(0, self.released - self.rules.holdback)
        spans = [_Span(s.start + base, s.end + base, s.kind, s.placeholder)
                 for s in self.rules.spans(self.raw[base:])]
        for span in spans:  # never cut through a match: it may still be growing
            if span.start < cut < span.end:
                cut = span.start
        if cut <= self.released:
            return ""
        pieces, position = [], self.released
        for span in spans:
            if span.end <= self.released or span.start >= cut:
                continue
            pieces.append(self.raw[position:max(position, span.start)])
            pieces.append(span.placeholder)
            self.counts[span.kind] += 1
            position = span.end
        pieces.append(self.raw[position:cut])
        self.released = cut
        return "".join(pieces)

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

from lmforge.errors import UserError
from lmforge.serve.config import InputFilterConfig, OutputFilterConfig
from lmforge.text.blocklist import PLACEHOLDER, Blocklist
from lmforge.text.pii import PLACEHOLDERS, PIIRedactor
from lmforge.text.settle import Earliest, Horizon, MatchShape

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


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: str
    placeholder: str


@dataclass(frozen=True)
class Piece:
    """A stretch of released output: raw[raw_start:raw_end] as sent (the raw text itself, or
    the placeholder of the match it was part of), starting at `out_start` in the output."""

    raw_start: int
    raw_end: int
    text: str
    out_start: int
    redacted: bool


class OutputFilter:
    def __init__(self, cfg: OutputFilterConfig) -> None:
        self.pii = PIIRedactor(cfg.pii) if cfg.pii else None
        self.blocklist = Blocklist.from_files(cfg.blocklist, "serve.safety.output.blocklist")
        patterns = [d.pattern for d in self.pii.detectors] if self.pii else []
        if self.blocklist:
            patterns.append(self.blocklist.pattern)
        self.behind = max((MatchShape.of(p).behind for p in patterns), default=0)

    @property
    def active(self) -> bool:
        return self.pii is not None or bool(self.blocklist)

    def spans(self, text: str, start: int = 0) -> tuple[list[_Span], list[tuple[int, int]]]:
        """Non-overlapping matches at or after `start` in text order (PII first, then
        blocklisted terms), and every candidate span the rules considered."""
        found, candidates = [], []
        if self.pii:
            matches, candidates = self.pii.scan(text, start)
            found = [_Span(m.start, m.end, m.kind, PLACEHOLDERS[m.kind]) for m in matches]
        if self.blocklist:
            for m in self.blocklist.find(text, start):
                candidates.append((m.start, m.end))
                if all(m.end <= s.start or m.start >= s.end for s in found):
                    found.append(_Span(m.start, m.end, "blocklist", PLACEHOLDER))
        return sorted(found, key=lambda s: s.start), candidates

    def horizon(self) -> Earliest:
        """A tracker of the settled prefix of a growing reply for every rule."""
        horizons: list[Horizon] = [self.pii.horizon()] if self.pii else []
        if self.blocklist:
            horizons.append(self.blocklist.horizon())
        return Earliest(horizons)

    def stream(self, context: str = "") -> StreamRedactor:
        """A redactor for one reply; `context` (the prompt) is not sent, but a match that
        begins in it is: its part in the reply becomes the placeholder."""
        return StreamRedactor(self, context)

    def redact(self, text: str, context: str = "") -> tuple[str, Counter[str]]:
        redactor = self.stream(context)
        out = redactor.push(text) + redactor.finish()
        return out, redactor.counts

    def alternative(self, raw: str, base: int, at: int, token: str) -> str | None:
        """The placeholder that `token` would have become had it been written at raw[at]
        instead of what was (None: it shows as it is). `base` is a settled point <= at."""
        if not self.active:
            return None
        lo = max(0, base - self.behind)
        text = raw[lo:at] + token
        spans, _ = self.spans(text, base - lo)
        return next((s.placeholder for s in spans if s.end > at - lo), None)


class StreamRedactor:
    """Redacts text that arrives in pieces; `counts` holds what was replaced, by kind, and
    `pieces` what was released, so other channels (logprobs) can follow the same text."""

    def __init__(self, rules: OutputFilter, context: str = "") -> None:
        self.rules = rules
        self.raw = context
        self.released = len(context)  # raw text before this is sent (or is context)
        self.emitted = 0  # characters of output sent
        self.counts: Counter[str] = Counter()
        self.pieces: list[Piece] = []
        self.horizon = rules.horizon() if rules.active else None
        self.scan_from = 0  # no candidate match crosses it and everything before is final
        if self.horizon is not None and context:
            self.scan_from = self._cut(self.horizon.advance(context))[0]

    def push(self, text: str) -> str:
        self.raw += text
        if self.horizon is None:
            return self._release(len(self.raw), [])
        cut, spans = self._cut(self.horizon.advance(self.raw))
        return self._release(cut, spans)

    def finish(self) -> str:
        if self.horizon is None:
            return self._release(len(self.raw), [])
        return self._release(*self._cut(len(self.raw)))

    def _cut(self, settled: int) -> tuple[int, list[_Span]]:
        """The settled point moved back so that it cuts through no candidate match."""
        spans, candidates = self.rules.spans(self.raw, self.scan_from)
        cut, moved = settled, True
        while moved:
            moved = False
            for start, end in candidates:
                if start < cut < end:
                    cut, moved = start, True
        return max(cut, self.scan_from), spans

    def _release(self, cut: int, spans: list[_Span]) -> str:
        if cut <= self.released:
            return ""
        position, out = self.released, []
        for span in spans:
            if span.end <= self.released or span.start >= cut:
                continue
            if span.start > position:
                out.append(self._piece(position, span.start, self.raw[position:span.start], False))
            out.append(self._piece(max(position, span.start), span.end, span.placeholder, True))
            self.counts[span.kind] += 1
            position = span.end
        if cut > position:
            out.append(self._piece(position, cut, self.raw[position:cut], False))
        self.released = self.scan_from = cut
        return "".join(p.text for p in out)

    def _piece(self, raw_start: int, raw_end: int, text: str, redacted: bool) -> Piece:
        piece = Piece(raw_start, raw_end, text, self.emitted, redacted)
        self.pieces.append(piece)
        self.emitted += len(text)
        return piece

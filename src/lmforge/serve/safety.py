"""Safety filters: reject bad prompts (400 naming the rule), redact replies.

Input: the user's blocklist and prompt-injection rules (lmforge.text.injection's built-in
English and Chinese rules, matched after undoing evasions such as zero-width characters,
full-width letters and homoglyphs, plus any patterns from the config) are checked against
what the client wrote (message contents, prompt text, and prompts sent as token ids after
decoding), never against the chat template's own markup.

Output: PII and blocklisted terms are replaced by placeholders ([EMAIL], [PHONE],
[BLOCKED], ...), using lmforge.text's `PIIRedactor` and `Blocklist`, so serving and training
data agree on what counts.

A streamed reply is redacted as it goes, holding back only what could still grow into a
match: the trailing run of characters that PII is made of (an e-mail address or a phone
number arriving over several tokens), the last few words when a blocklisted phrase has
several, and never more than `holdback_chars`. Released text never cuts through a match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.model.sampling import TokenLogprob
from lmforge.serve.config import InputFilterConfig, OutputFilterConfig
from lmforge.text.blocklist import PLACEHOLDER, Blocklist
from lmforge.text.injection import InjectionDetector
from lmforge.text.pii import PLACEHOLDERS, PIIRedactor
from lmforge.text.settle import Earliest, Horizon, MatchShape


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
        self.injection = InjectionDetector(cfg.patterns, builtin=cfg.injection)

    def check(self, texts: list[str]) -> Rejection | None:
        """The first rule a text breaks, or None."""
        for text in texts:
            if self.blocklist:
                found = self.blocklist.find(text)
                if found:
                    return Rejection("blocklist", text[found[0].start:found[0].end])
            hit = self.injection.find(text)
            if hit is not None:
                return Rejection(*hit)
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


@dataclass(frozen=True)
class ShownLogprob:
    """A token's logprob entry as the client sees it: texts after redaction."""

    text: str
    logprob: float
    top: list[tuple[str, float]]


ALTERNATIVE_WINDOW = 1024  # raw characters before a token that its alternatives are read with


class LogprobFilter:
    """Token logprobs that carry the same redacted text as the reply they belong to.

    An entry is held until the redactor has released its whole text, then shown as the part
    of the output its text became: a token inside a redacted match shows the placeholder (the
    first token of the match) or nothing (the rest), and so do its alternatives, so neither
    the PII nor what the model would have written instead leaks. Elsewhere an alternative
    that would have completed a match is shown as that match's placeholder."""

    def __init__(self, redactor: StreamRedactor, token_text: Callable[[int], str]) -> None:
        self.redactor, self.token_text = redactor, token_text
        self.base = len(redactor.raw)  # where the reply starts in the redactor's raw text
        self.pending: list[tuple[TokenLogprob, int]] = []  # entries and their raw end
        self.start = self.base  # raw start of the first pending entry
        self.claimed: set[int] = set()  # raw starts of redacted pieces already shown
        self.piece = 0  # index of the first piece that may still overlap a pending entry

    def add(self, entries: list[TokenLogprob], text_ends: list[int]) -> None:
        self.pending += [(e, self.base + end) for e, end in zip(entries, text_ends, strict=True)]

    def release(self, final: bool = False) -> list[ShownLogprob]:
        """The entries whose text the redactor has released (all of them when `final`)."""
        shown = []
        while self.pending:
            entry, end = self.pending[0]
            end, released = max(end, self.start), self.redactor.released
            # a token that adds no character (part of one split over tokens) belongs to the
            # next character: it waits until that is released too
            if not (final or end < released or self.start < end == released):
                break
            self.pending.pop(0)
            shown.append(self._show(entry, self.start, end))
            self.start = end
        return shown

    def _show(self, entry: TokenLogprob, start: int, end: int) -> ShownLogprob:
        if not self.redactor.rules.active:
            text = self.token_text(entry.token_id)
            return ShownLogprob(text, entry.logprob, [(self.token_text(t), lp) for t, lp in
                                                      entry.top])
        pieces = self.redactor.pieces
        while self.piece < len(pieces) and pieces[self.piece].raw_end <= start:
            self.piece += 1  # later tokens start at or after `start`
        inside = [p for p in pieces[self.piece:] if _overlaps(p, start, end)]
        redacted = next((p for p in inside if p.redacted), None)
        if redacted is None:
            text = self.token_text(entry.token_id)
            top = [(self._alternative(start, entry, t), lp) for t, lp in entry.top]
            return ShownLogprob(text, entry.logprob, top)
        text = "".join(self._part(p, start, end) for p in inside)
        hidden = redacted.text
        top = [(text if t == entry.token_id else hidden, lp) for t, lp in entry.top]
        return ShownLogprob(text, entry.logprob, top)

    def _part(self, piece: Piece, start: int, end: int) -> str:
        if not piece.redacted:
            raw = self.redactor.raw
            return raw[max(start, piece.raw_start):min(end, piece.raw_end)]
        if piece.raw_start in self.claimed:
            return ""
        self.claimed.add(piece.raw_start)
        return piece.text

    def _alternative(self, at: int, entry: TokenLogprob, token_id: int) -> str:
        text = self.token_text(token_id)
        if token_id == entry.token_id:
            return text
        base = max(self.base, at - ALTERNATIVE_WINDOW)
        placeholder = self.redactor.rules.alternative(self.redactor.raw, base, at, text)
        return text if placeholder is None else placeholder


def _overlaps(piece: Piece, start: int, end: int) -> bool:
    """Whether a token's raw text [start, end) is part of `piece`; a token that adds no
    character (part of a character split over tokens) belongs to the piece it begins."""
    if start == end:
        return piece.raw_start <= start < piece.raw_end
    return piece.raw_start < end and start < piece.raw_end

"""Every channel that carries generated text carries the redacted text: streamed output equals
whole-text redaction at any split points, for every PII kind, and token logprobs (chosen
tokens and their alternatives) show what the reply shows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.model.sampling import TokenLogprob
from lmforge.serve.config import OutputFilterConfig
from lmforge.serve.safety import LogprobFilter, OutputFilter
from lmforge.text.pii import KINDS, PLACEHOLDERS

SAMPLES = {
    "email": ["bob@example.com", "a.b-c+tag@mail.sub.example.org", "X_1@host.co"],
    "ip": ["10.0.0.7", "192.168.1.254", "2001:db8::ff00:42:8329", "2606:4700::1111",
           "::ffff:1.2.3.4", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "cn_id": ["11010519491231002X", "440308199901011234"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009"],
    "ssn": ["123-45-6789", "078-05-1120"],
    "cn_mobile": ["13800138000", "+86 138 0013 8000"],
    "phone": ["415-555-2671", "(415) 555-2671", "+1 415 555 2671"],
}
FILLER = ["hello", "the", "server", "at", "is", "call", "mail", ",", ".", ":", "::", "1.2",
          "v3.1.1.6", "手机", "身份证", "地址", "e", "f", "-", "(", ")", "+", "ab:cd", "\n", "  "]


def reply(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.4:
            kind = rng.choice(list(SAMPLES))
            parts.append(rng.choice(SAMPLES[kind]))
        else:
            parts.append(rng.choice(FILLER))
    return "".join(p + rng.choice(["", " ", " ", ", ", "\n", "。"]) for p in parts)


def split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def test_every_pii_kind_has_samples_that_are_redacted() -> None:
    flt = OutputFilter(OutputFilterConfig())
    assert set(SAMPLES) == set(KINDS)
    for kind, samples in SAMPLES.items():
        for sample in samples:
            out, _ = flt.redact(f"see {sample} here")
            assert sample not in out and PLACEHOLDERS[kind] in out, (kind, sample, out)


@pytest.mark.parametrize("seed", range(8))
def test_streamed_redaction_equals_whole_text_at_random_split_points(seed: int) -> None:
    rng = random.Random(seed)
    flt = OutputFilter(OutputFilterConfig())
    for _ in range(150):
        text = reply(rng)
        whole, counts = flt.redact(text)
        stream = flt.stream()
        out = "".join(stream.push(piece) for piece in split(text, rng)) + stream.finish()
        assert out == whole and stream.counts == counts, repr(text)


def test_ipv6_is_held_back_until_it_is_decided() -> None:
    flt = OutputFilter(OutputFilterConfig())
    stream = flt.stream()
    sent = "".join(stream.push(c) for c in "route via 2001:db8::ff00:42:8329 ok")
    sent += stream.finish()
    assert sent == "route via [IP] ok"
    partial = flt.stream()
    assert "2001" not in "".join(partial.push(c) for c in "via 2001:db8::1")


class Vocab:
    """A toy vocabulary: token ids are indexes into a list of strings."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def id(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)

    def text(self, token_id: int) -> str:
        return self.texts[token_id]


def stream_logprobs(flt: OutputFilter, vocab: Vocab, tokens: list[str],
                    alternatives: dict[int, list[str]], deltas: list[int]):
    """Run tokens through a redactor and a LogprobFilter in deltas of the given sizes, as the
    server does; returns (text sent, logprob entries sent)."""
    redactor = flt.stream()
    logprobs = LogprobFilter(redactor, vocab.text)
    text, shown, end, i = "", [], 0, 0
    for size in deltas:
        chunk = tokens[i:i + size]
        entries, ends = [], []
        for k, token in enumerate(chunk, start=i):
            end += len(token)
            top = [(vocab.id(token), -0.1)] + [(vocab.id(a), -2.0) for a in alternatives.get(k, [])]
            entries.append(TokenLogprob(vocab.id(token), -0.1, top))
            ends.append(end)
        i += size
        final = i >= len(tokens)
        text += redactor.push("".join(chunk))
        if final:
            text += redactor.finish()
        logprobs.add(entries, ends)
        shown += logprobs.release(final)
        if final:
            break
    return text, shown


TOKENS = ["Mail", " bob", "@", "exam", "ple", ".com", " or", " call", " 415", "-555",
          "-26", "71", " from", " 10.0", ".0", ".", "9", " now"]


@pytest.mark.parametrize("sizes", [[1] * 18, [3] * 6, [18], [2, 5, 1, 4, 6]])
def test_logprobs_carry_the_redacted_text_and_hide_alternatives(sizes: list[int]) -> None:
    flt = OutputFilter(OutputFilterConfig())
    vocab = Vocab()
    alternatives = {3: ["examp", "evil"], 9: ["-556"], 16: ["x", "7"], 17: [" later"]}
    text, shown = stream_logprobs(flt, vocab, TOKENS, alternatives, sizes)
    assert text == "Mail [EMAIL] or call [PHONE] from [IP] now"
    assert "".join(e.text for e in shown) == text
    assert len(shown) == len(TOKENS)
    for entry in shown:
        for alt, _ in entry.top:
            assert not any(secret in alt for secret in ("bob", "exam", "555", "10.0", "-556"))
    inside_email = shown[3]
    assert inside_email.text == "" and {t for t, _ in inside_email.top} == {"", "[EMAIL]"}
    assert shown[17].top[1][0] == " later"  # outside any match: alternatives as they are


def test_an_alternative_that_would_complete_pii_shows_its_placeholder() -> None:
    flt = OutputFilter(OutputFilterConfig())
    vocab = Vocab()
    tokens = ["host", " 10.0", ".0", ".", "x", " done"]
    text, shown = stream_logprobs(flt, vocab, tokens, {4: ["7", "y"]}, [1] * len(tokens))
    assert text == "host 10.0.0.x done"
    assert [t for t, _ in shown[4].top] == ["x", "[IP]", "y"]


def test_logprobs_are_unchanged_without_an_output_filter() -> None:
    flt = OutputFilter(OutputFilterConfig(pii=[]))
    vocab = Vocab()
    text, shown = stream_logprobs(flt, vocab, TOKENS, {3: ["evil"]}, [4] * 5)
    assert text == "".join(TOKENS) == "".join(e.text for e in shown)
    assert [t for t, _ in shown[3].top] == ["exam", "evil"]


def test_a_character_split_over_tokens_stays_with_its_match(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("禁词\n", encoding="utf-8")
    flt = OutputFilter(OutputFilterConfig(pii=[], blocklist=[words]))
    vocab = Vocab()
    redactor = flt.stream()
    logprobs = LogprobFilter(redactor, vocab.text)
    # "禁" arrives over two tokens: the first adds no character (its text end does not move)
    pieces = [("ok ", 3), ("\ufffd", 3), ("禁", 4), ("词", 5), (" end", 9)]
    raw = ["ok ", "", "禁", "词", " end"]
    sent, shown = "", []
    for (token, end), text in zip(pieces, raw, strict=True):
        sent += redactor.push(text)
        logprobs.add([TokenLogprob(vocab.id(token), -0.5, [])], [end])
        shown += logprobs.release()
    sent += redactor.finish()
    shown += logprobs.release(final=True)
    assert sent == "ok [BLOCKED] end" == "".join(e.text for e in shown)
    assert "\ufffd" not in "".join(e.text for e in shown)

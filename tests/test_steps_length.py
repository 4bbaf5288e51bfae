"""length: min/max in characters, words or tokens' worth."""

import pydoc_data.topics
from pathlib import Path

import pydantic
import pytest

from lmforge.data.config import LengthConfig
from lmforge.data.document import Doc
from lmforge.data.steps.length import Length, measure

ZH_PROSE = (Path(__file__).parent / "data" / "steps_zh_prose.txt").read_text(encoding="utf-8")


def doc(text: str) -> Doc:
    return Doc("d", text, "test", "t:1")


def test_units():
    text = "Hello brave new world, 你好。"
    assert measure(text, "chars") == len(text)
    assert measure(text, "words") == 6  # 4 English words + 你 + 好
    assert measure(text, "tokens") == 2 + round((len(text) - 2) / 4)


def test_default_drops_under_50_and_over_2048_tokens():
    step = Length(LengthConfig())
    assert step.check(doc("x" * 196)) == ("too_short", "49 < 50 tokens")
    assert step.check(doc("x" * 200)) is None
    assert step.check(doc("x" * 8192)) is None
    assert step.check(doc("x" * 8196)) == ("too_long", "2049 > 2048 tokens")


def test_chinese_counts_one_token_per_character():
    step = Length(LengthConfig())
    assert step.check(doc("中" * 49)) == ("too_short", "49 < 50 tokens")
    assert step.check(doc(ZH_PROSE)) is None  # ~600 characters, well inside the bounds


def test_words_and_chars_units_and_open_bounds():
    words = Length(LengthConfig(unit="words", min=3, max=None))
    assert words.check(doc("two words")) == ("too_short", "2 < 3 words")
    assert words.check(doc("three small words " * 1000)) is None
    chars = Length(LengthConfig(unit="chars", min=None, max=5))
    assert chars.check(doc("")) is None
    assert chars.check(doc("toolong")) == ("too_long", "7 > 5 chars")


def test_edge_cases_empty_whitespace_symbols():
    step = Length(LengthConfig())
    assert step.check(doc(""))[0] == "too_short"
    assert step.check(doc(" " * 100))[0] == "too_short"
    assert step.check(doc("#" * 400)) is None  # length only: noise is another step's business


def test_min_above_max_is_a_config_error():
    with pytest.raises(pydantic.ValidationError, match="larger than max"):
        LengthConfig(min=100, max=10)


def test_real_english_topics_split_by_the_default_bounds():
    step = Length(LengthConfig())
    result = step.process([doc(t) for t in pydoc_data.topics.topics.values()])
    short = [d for d, reason, _ in result.dropped if reason == "too_short"]
    long = [d for d, reason, _ in result.dropped if reason == "too_long"]
    assert all(len(d.text) < 198 for d in short)
    assert all(len(d.text) > 8194 for d in long)
    assert all(198 <= len(d.text) <= 8194 for d in result.kept)
    assert long and result.kept


def test_emoji_mixed_and_long_lines():
    step = Length(LengthConfig(unit="words", min=2, max=10))
    assert step.check(doc("😀 😀 😀")) is None  # an emoji is a word (a symbol, not punctuation)
    assert step.check(doc("中文 text")) is None  # 中, 文, text
    assert step.check(doc("word " * 100_000)) == ("too_long", "100000 > 10 words")

"""noise: replacement characters, symbol soup, punctuation runs, invisible characters, regexes."""

import pydoc_data.topics
from pathlib import Path

import pytest

from lmforge.data.config import NoiseConfig
from lmforge.data.document import Doc
from lmforge.data.steps.noise import Noise, longest_symbol_run
from lmforge.errors import UserError

ZH_PROSE = (Path(__file__).parent / "data" / "steps_zh_prose.txt").read_text(encoding="utf-8")
ENGLISH = pydoc_data.topics.topics["execmodel"]


def check(text: str, **cfg) -> tuple[str, str] | None:
    return Noise(NoiseConfig(**cfg)).check(Doc("d", text, "test", "t:1"))


def test_real_english_and_chinese_pass():
    assert check(ENGLISH) is None
    assert check(ZH_PROSE) is None


def test_replacement_characters_at_the_threshold():
    assert check("a" * 99 + "\ufffd") is None  # 1 of 100 = 0.01, not above
    assert check("a" * 98 + "\ufffd" * 2) == ("replacement_chars", "0.020 > 0.010")


def test_symbol_ratio_counts_punctuation_and_symbols_over_visible_characters():
    assert check("abc! " * 20) is None  # 1 of 4 visible = 0.25, not above
    assert check("ab!! " * 20) == ("symbol_ratio", "0.500 > 0.250")
    assert check("#$%^&*()!@ x") == ("symbol_ratio", "0.909 > 0.250")


def test_emoji_count_as_symbols():
    assert check("What a lovely day at the beach with friends 😀") is None
    assert check("😀🎉🔥 yes 😀🎉🔥")[0] == "symbol_ratio"


def test_punctuation_run_longer_than_the_limit():
    assert check("word " * 50 + "!?" * 20) is None  # run of 40
    assert check("word " * 50 + "!?" * 20 + "#") == ("punctuation_run", "41 > 40 characters")


def test_heading_underline_or_rule_is_not_a_run():
    text = "Title\n" + "=" * 79 + "\n\n" + "Some real words here. " * 20 + "\n" + "-" * 60
    assert longest_symbol_run(text) == 1  # the full stops
    assert check(text) is None
    assert check("text " * 100 + "=" * 60 + " inline")[0] == "punctuation_run"


def test_nonprintable_ratio():
    private_use = "\ue000"
    assert check("a" * 99 + private_use) is None
    assert check("a" * 97 + private_use * 3) == ("nonprintable", "0.030 > 0.010")
    assert check("family: 👨\u200d👩\u200d👧 " + "word " * 20) is None  # joiners are printable


def test_user_patterns_drop_on_match():
    cfg = {"drop_patterns": [r"(?i)lorem ipsum", r"\bbuy now\b"]}
    assert check(ENGLISH, **cfg) is None
    reason, detail = check("Great offer, buy now while it lasts.", **cfg)
    assert reason == "pattern" and "buy now" in detail


def test_bad_user_regex_is_a_user_error_naming_the_key_and_pattern():
    with pytest.raises(UserError, match=r"data\.noise\.drop_patterns: '\(unclosed'"):
        Noise(NoiseConfig(drop_patterns=["fine", "(unclosed"]))


def test_empty_and_whitespace_only_are_not_noise():
    assert check("") is None
    assert check(" \n\t ") is None


def test_long_single_line_is_handled():
    assert check("word " * 200_000) is None
    assert check("x" * 1_000_000 + "!" * 41)[0] == "punctuation_run"


def test_mixed_chinese_english_passes():
    assert check(ZH_PROSE + "\n\n" + ENGLISH[:1000]) is None

"""Gopher quality and repetition rules: each fires just above its published threshold, not at it."""

import itertools
import pydoc_data.topics
import re
from pathlib import Path

import pytest

from lmforge.data.config import GopherQualityConfig, GopherRepetitionConfig
from lmforge.data.steps.gopher import GopherQuality, GopherRepetition, compare
from lmforge.data.text import split_words

DATA = Path(__file__).parent / "data"
ZH_PROSE = (DATA / "steps_zh_prose.txt").read_text(encoding="utf-8")
ZH_CLASSICAL = (DATA / "steps_zh_classical.txt").read_text(encoding="utf-8")


def prose(topic: str, paragraphs: int = 8) -> str:
    """Unwrapped prose paragraphs of a pydoc topic (no code, lists or tables)."""
    kept = []
    for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
        if any(line.startswith((" ", "*", "-", "+", "=")) for line in block.split("\n")):
            continue
        paragraph = " ".join(block.split())
        if paragraph.endswith(".") and len(paragraph.split()) >= 20:
            kept.append(paragraph)
    return "\n\n".join(kept[:paragraphs])


ENGLISH = prose("execmodel")
PROSE_WORDS = ENGLISH.split()


FILLER = [
    word
    for word in map("".join, itertools.product("bcdfgjklmnprstvz", "aeiou", "bcdfgkmnpt", "aiou"))
    if word != "have"
]  # 3200 distinct four-letter words, none of them a stop word


def filler(count: int, offset: int = 0) -> list[str]:
    assert offset + count <= len(FILLER)
    return FILLER[offset : offset + count]


def quality(text: str, **cfg) -> tuple[str, str] | None:
    return GopherQuality(GopherQualityConfig(**cfg)).check(text, split_words(text))


def repetition(text: str, **cfg) -> tuple[str, str] | None:
    return GopherRepetition(GopherRepetitionConfig(**cfg)).check(text, split_words(text))


@pytest.mark.parametrize(
    "text", [ENGLISH, prose("naming"), prose("import"), ZH_PROSE, ZH_CLASSICAL]
)
def test_real_english_and_chinese_pass_both_rule_sets(text):
    assert quality(text) is None
    assert repetition(text) is None


def test_mixed_chinese_english_passes():
    text = ZH_PROSE + "\n\n" + prose("naming", 2)
    assert quality(text) is None
    assert repetition(text) is None


def test_details_show_enough_decimals_to_tell_value_from_limit():
    assert compare(0.42, ">", 0.3) == "0.42 > 0.30"
    assert compare(0.2031, ">", 0.2) == "0.203 > 0.200"
    assert compare(37, "<", 50) == "37 < 50"


# --- quality rules ---------------------------------------------------------------------------


def test_word_count_bounds():
    assert quality(" ".join(PROSE_WORDS[:50])) is None
    assert quality(" ".join(PROSE_WORDS[:49])) == ("gopher_quality.min_words", "49 < 50")
    assert quality(" ".join(PROSE_WORDS[:61]), max_words=60) == (
        "gopher_quality.max_words",
        "61 > 60",
    )


def test_mean_word_length_bounds():
    three = "the cat and dog ran far " * 10  # 60 words of exactly 3 letters
    assert quality(three) is None
    assert quality(three.replace("far", "fa", 1)) == (
        "gopher_quality.mean_word_length",
        "2.98 < 3.00",
    )
    ten = " ".join(["abcdefghij"] * 56 + ["with", "have", "abcdefghijklmnop", "abcdefghijklmnop"])
    assert quality(ten) is None  # (560 + 8 + 32) / 60 = 10.0
    assert quality(ten + "q") == ("gopher_quality.mean_word_length", "10.02 > 10.00")


def test_mean_word_length_is_skipped_for_cjk_dominant_text():
    assert quality(ZH_PROSE) is None  # every word is one character long
    mixed = "我们的模型训练在这里进行。" * 5 + " " + " ".join(["extraordinarily"] * 20)
    assert quality(mixed) is None  # 60+ CJK words, 20 long English words: CJK-dominant


def test_mean_word_length_ignores_cjk_characters_in_english_dominant_text():
    words = PROSE_WORDS[:80]
    text = " ".join(words) + " 中文"
    assert quality(text) is None


def test_hash_and_ellipsis_ratios():
    words = PROSE_WORDS[:100]
    assert quality(" ".join(words + ["#"] * 10)) is None  # 10 / 100 = 0.10
    assert quality(" ".join(words + ["#"] * 11)) == ("gopher_quality.hash_ratio", "0.11 > 0.10")
    with_ellipses = " ".join(words[:50] + ["..."] * 6 + words[50:] + ["…"] * 5) + " end."
    assert quality(with_ellipses) == ("gopher_quality.ellipsis_ratio", "0.11 > 0.10")


def test_bullet_lines_ratio():
    lines = [" ".join(PROSE_WORDS[i * 10 : i * 10 + 10]) for i in range(10)]
    nine = "\n".join(["• " + line for line in lines[:9]] + [lines[9]])
    assert quality(nine) is None  # 0.9
    ten = "\n".join("- " + line for line in lines)
    assert quality(ten) == ("gopher_quality.bullet_lines", "1.00 > 0.90")


def test_ellipsis_lines_ratio():
    lines = [" ".join(PROSE_WORDS[i * 10 : i * 10 + 10]) for i in range(10)]
    three = "\n".join([line + "..." for line in lines[:3]] + lines[3:])
    assert quality(three) is None
    four = "\n".join([line + " …" for line in lines[:4]] + lines[4:])
    assert quality(four) == ("gopher_quality.ellipsis_lines", "0.40 > 0.30")


def test_alphabetic_words_ratio():
    words = PROSE_WORDS[:80]
    assert quality(" ".join(words + ["2024"] * 20)) is None  # 80 / 100
    assert quality(" ".join(words + ["3.14"] * 21)) == ("gopher_quality.alpha_words", "0.79 < 0.80")


def test_stop_words():
    no_stop = " ".join(filler(60))
    assert quality(no_stop) == ("gopher_quality.stop_words", "0 < 2")
    assert quality(no_stop + " The end with") is None  # case-insensitive
    assert quality(no_stop + " the") == ("gopher_quality.stop_words", "1 < 2")
    assert quality(no_stop + " the THE the") == ("gopher_quality.stop_words", "1 < 2")  # distinct


def test_chinese_stop_words_and_custom_lists():
    no_stop_zh = "春眠晓处闻啼鸟夜来风雨声花落知多少" * 4
    assert quality(no_stop_zh) == ("gopher_quality.stop_words", "0 < 2")
    assert quality(no_stop_zh + "我们的") is None
    assert quality(no_stop_zh, stop_words=["春眠", "啼鸟"]) is None
    assert quality(ENGLISH, stop_words=["zzz"]) == ("gopher_quality.stop_words", "0 < 2")


def test_edge_cases():
    assert quality("") == ("gopher_quality.min_words", "0 < 50")
    assert quality("  \n\n ") == ("gopher_quality.min_words", "0 < 50")
    assert quality("#$%! " * 100) == ("gopher_quality.min_words", "0 < 50")
    assert quality("😀 " * 60) == ("gopher_quality.mean_word_length", "1.00 < 3.00")


# --- repetition rules ------------------------------------------------------------------------


def lines_text(unique: int, copies: int, copied: str) -> str:
    lines = [" ".join(filler(8, offset=8 * i)) + "." for i in range(unique)]
    return "\n".join([copied, *lines, *[copied] * copies])


def test_duplicate_line_fraction():
    assert repetition(lines_text(6, 3, "Yes.")) is None  # 3 of 10 lines repeat: 0.30
    text = lines_text(5, 4, "Yes.")
    assert repetition(text) == ("gopher_repetition.dup_line_fraction", "0.40 > 0.30")


def test_blank_lines_are_not_duplicate_lines():
    text = "\n\n\n".join(" ".join(filler(8, offset=8 * i)) + "." for i in range(10))
    assert repetition(text) is None


def test_duplicate_line_character_fraction():
    long_line = " ".join(filler(30, offset=500)) + "."
    text = lines_text(9, 1, long_line)
    fraction = len(long_line) / len(text)
    assert 0.2 < fraction < 0.3
    assert repetition(text) == (
        "gopher_repetition.dup_line_char_fraction",
        f"{fraction:.2f} > 0.20",
    )


def test_duplicate_paragraph_fractions():
    lines_off = {"max_dup_line_fraction": 1.0, "max_dup_line_char_fraction": 1.0}
    paragraphs = [" ".join(filler(6, 6 * i)) + ".\n" + " ".join(filler(6, 300 + 6 * i)) + "."
                  for i in range(7)]  # fmt: skip
    short = "Yes.\nNo."
    text = "\n\n".join([short, *paragraphs[:6], short, short, short])
    assert repetition(text, **lines_off) is None  # 3 of 10
    text = "\n\n".join([short, *paragraphs[:5], short, short, short, short])
    assert repetition(text, **lines_off) == ("gopher_repetition.dup_para_fraction", "0.40 > 0.30")
    text = "\n\n".join([*paragraphs[:3], paragraphs[0]])  # 1 of 4 repeats: 0.25
    fraction = len(paragraphs[0]) / len(text)
    assert repetition(text, **lines_off) == (
        "gopher_repetition.dup_para_char_fraction",
        f"{fraction:.2f} > 0.20",
    )


def text_with_repeated_phrase(phrase: list[str], copies: int, filler_words: int) -> str:
    """The phrase `copies` times, separated by distinct filler, on one line."""
    words = filler(filler_words)
    step = filler_words // copies
    out = []
    for i in range(copies):
        out += words[i * step : (i + 1) * step] + phrase
    out += words[copies * step :]
    return " ".join(out) + " with the end"


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_character_fraction(n, limit):
    phrase = ["quick", "brown", "foxes", "jumps"][:n]
    copies = 12
    covered = copies * 5 * n
    for filler_words, fires in ((None, True), (None, False)):
        target = limit + (0.004 if fires else -0.004)
        filler_words = round((covered / target - covered - 3 - 3 - 3) / 4)
        text = text_with_repeated_phrase(phrase, copies, filler_words)
        total = sum(map(len, split_words(text)))
        fraction = covered / total
        assert (fraction > limit) == fires
        expected = (f"gopher_repetition.top_{n}gram_char_fraction", compare(fraction, ">", limit))
        assert repetition(text) == (expected if fires else None)


@pytest.mark.parametrize(
    ("n", "limit"), [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
)
def test_duplicate_ngram_character_fraction(n, limit):
    phrase = filler(n, offset=2000)
    copies = 3
    covered = copies * 4 * n
    for fires in (True, False):
        target = limit + (0.004 if fires else -0.004)  # between this n's and the next limit
        filler_words = round((covered / target - covered - 12) / 4)
        text = text_with_repeated_phrase(phrase, copies, filler_words)
        total = sum(map(len, split_words(text)))
        fraction = covered / total
        assert (fraction > limit) == fires
        expected = (f"gopher_repetition.dup_{n}gram_char_fraction", compare(fraction, ">", limit))
        assert repetition(text) == (expected if fires else None)


def test_overlapping_repeats_count_each_character_once():
    phrase = filler(6, offset=3000)
    repeated = phrase * 3  # 18 words, every 5-gram inside repeats, overlapping
    text = " ".join(filler(200) + repeated) + " with the end"
    covered = 18 * 4
    total = sum(map(len, split_words(text)))
    cfg = {"max_top_ngram_char_fraction": {}, "max_dup_ngram_char_fraction": {5: 0.05}}
    assert repetition(text, **cfg) == (
        "gopher_repetition.dup_5gram_char_fraction",
        f"{covered / total:.2f} > 0.05",
    )


def test_repeated_chinese_is_caught_by_character_ngrams():
    sentence = "今天我们一起去公园散步，看到了很多美丽的花。"
    text = ZH_PROSE.split("\n\n")[0] + sentence * 6
    reason, _ = repetition(text)
    assert reason.startswith("gopher_repetition.")
    assert repetition(ZH_PROSE + sentence) is None


def test_repetition_edge_cases():
    assert repetition("") is None
    assert repetition(" \n ") is None
    assert repetition("word") is None
    assert repetition("!!! ???") is None

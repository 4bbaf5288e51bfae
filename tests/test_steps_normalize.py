"""normalize: Unicode form, mojibake, controls and ANSI escapes, whitespace; empty docs dropped."""

import pydoc_data.topics
from pathlib import Path

import pytest

from lmforge.data.config import NormalizeConfig
from lmforge.data.document import Doc
from lmforge.data.steps.normalize import Normalize, normalize_text

ZH_PROSE = (Path(__file__).parent / "data" / "steps_zh_prose.txt").read_text(encoding="utf-8")
DEFAULT = NormalizeConfig()


def docs(*texts: str) -> list[Doc]:
    return [Doc(f"d{i}", text, "test", f"t:{i}") for i, text in enumerate(texts)]


def test_mojibake_is_repaired():
    broken = "The cafÃ© was closed â€” sadly."
    assert normalize_text(broken, DEFAULT) == "The café was closed — sadly."
    chinese_as_latin1 = "ä¸­æ–‡æ–‡æœ¬"  # "中文文本" decoded as cp1252
    assert normalize_text(chinese_as_latin1, DEFAULT) == "中文文本"


def test_cjk_full_width_punctuation_survives_nfc():
    text = "你好，世界！（测试）：一、二；“引号”。"
    assert normalize_text(text, DEFAULT) == text


def test_nfkc_folds_compatibility_characters_nfc_does_not():
    text = "ﬁle №５ ｆｕｌｌ"
    assert normalize_text(text, DEFAULT) == text
    assert normalize_text(text, NormalizeConfig(unicode_form="NFKC")) == "file No5 full"
    assert normalize_text("e\u0301", DEFAULT) == "é"  # combining accent composed by NFC


def test_control_characters_and_ansi_escapes_are_removed():
    text = "\x1b[31mred\x1b[0m and \x1b]0;title\x07plain\x00\x08 bell\x07 done\ufeff\u200b."
    assert normalize_text(text, DEFAULT) == "red and plain bell done."


def test_line_breaks_are_unified():
    assert normalize_text("a\r\nb\rc\fd\u2028e", DEFAULT) == "a\nb\nc\nd\ne"


def test_lone_surrogate_becomes_replacement_character():
    assert normalize_text("ok \ud800 done", DEFAULT) == "ok \ufffd done"


def test_whitespace_keeps_indentation_and_one_blank_line_between_paragraphs():
    text = (
        "\n\n  Title   here  \n\n\n\n\tindented\tline   end   \n"
        "    code  block\nlast\u00a0\u00a0word \n\n"
    )
    assert normalize_text(text, DEFAULT) == (
        "  Title here\n\n\tindented\tline end\n    code block\nlast word"
    )


def test_chinese_ideographic_space_indent_is_kept():
    text = "\u3000\u3000我小时候住在江南。\u3000\n"
    assert normalize_text(text, DEFAULT) == "\u3000\u3000我小时候住在江南。"


def test_each_option_can_be_switched_off():
    cfg = NormalizeConfig(
        unicode_form="none", fix_mojibake=False, strip_control=False, normalize_whitespace=False
    )
    text = "cafÃ©  \x00 e\u0301\r\n\n\n"
    assert normalize_text(text, cfg) == text


def test_step_counts_modified_and_drops_empty_documents():
    result = Normalize(DEFAULT).process(
        docs("clean text", "needs  trimming   ", "", "  \n\t \n", "\x1b[0m\x00")
    )
    assert [d.text for d in result.kept] == ["clean text", "needs trimming"]
    assert result.modified == 3  # trimmed, whitespace-only emptied, escape-only emptied
    assert [(d.id, reason) for d, reason, _ in result.dropped] == [
        ("d2", "empty"),
        ("d3", "empty"),
        ("d4", "empty"),
    ]


@pytest.mark.parametrize("topic", ["assert", "execmodel", "formatstrings", "typesseq"])
def test_real_english_keeps_its_words_and_is_idempotent(topic):
    text = pydoc_data.topics.topics[topic]
    once = normalize_text(text, DEFAULT)
    assert once.split() == text.split()  # only whitespace layout may change
    assert normalize_text(once, DEFAULT) == once


def test_real_chinese_is_unchanged_except_the_final_newline():
    assert normalize_text(ZH_PROSE, DEFAULT) == ZH_PROSE.strip("\n")


def test_symbols_emoji_mixed_text_and_long_lines_pass_through():
    for text in ("#$%^&*()!@", "😀🎉 family: 👨\u200d👩\u200d👧", "我们用 PyTorch 训练模型。"):
        assert normalize_text(text, DEFAULT) == text
    long_line = "word " * 200_000
    assert normalize_text(long_line, DEFAULT) == long_line.rstrip()

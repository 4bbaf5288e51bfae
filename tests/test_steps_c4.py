"""C4 rules (TFDS c4_utils semantics): line edits, page drops, CJK end marks, paragraph mode."""

import pydoc_data.topics
import re
from pathlib import Path

from lmforge.data.config import C4Config
from lmforge.data.steps.c4 import CITATION_RE, C4Outcome, C4Rules

DATA = Path(__file__).parent / "data"
ZH_PROSE = (DATA / "steps_zh_prose.txt").read_text(encoding="utf-8").strip()
ZH_CLASSICAL = (DATA / "steps_zh_classical.txt").read_text(encoding="utf-8").strip()
S1 = "The river runs through the middle of the town."
S2 = "Every morning people wash their clothes by the water."
S3 = "The old stone bridge is said to be three hundred years old."


def c4(text: str, **cfg) -> C4Outcome:
    return C4Rules(C4Config(**cfg)).apply(text)


def web_prose(topic: str) -> str:
    """pydoc prose with each paragraph on one line, the way extracted web text looks."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
        if not any(line.startswith((" ", "*", "-", "+", "=")) for line in block.split("\n")):
            paragraph = " ".join(block.split())
            if paragraph.endswith(".") and "{" not in paragraph:
                paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def test_real_english_and_chinese_pass_unchanged():
    for text in (web_prose("execmodel"), web_prose("import"), ZH_PROSE, ZH_CLASSICAL):
        outcome = c4(text)
        assert outcome.drop is None
        assert outcome.text == CITATION_RE.sub("", text)  # pydoc has footnote marks: [1]
        assert not outcome.removed_lines


def test_lines_without_terminal_mark_or_ending_in_ellipsis_are_removed():
    text = f"Home | About | Contact\n{S1}\n{S2} And then...\n{S3}\nRead more\n{S2}"
    outcome = c4(text)
    assert outcome.drop is None
    assert outcome.text == f"{S1}\n{S3}\n{S2}"
    assert outcome.removed_lines == {"no_terminal_punct": 3}


def test_quote_and_cjk_marks_end_lines():
    text = f'{S1}\nHe said "we stay here."\n他说：“我们留在这里。”\n真的吗？\n{S3}'
    outcome = c4(text, min_words_per_line=1)
    assert outcome.text == text


def test_min_words_per_line():
    text = f"{S1}\nFour words only here.\nFive words are right here.\n{S2}\n{S3}"
    outcome = c4(text)
    assert outcome.text == f"{S1}\nFive words are right here.\n{S2}\n{S3}"
    assert outcome.removed_lines == {"too_few_words": 1}
    zh = f"{ZH_PROSE}\n好的。\n五个字好。"  # 2 and 4 CJK words
    assert c4(zh).text == ZH_PROSE


def test_min_sentences_counts_sentences_not_lines():
    assert c4(f"{S1} {S2} {S3}").drop is None
    two = c4(f"{S1}\n{S2}")
    assert two.drop == ("c4.too_few_sentences", "2 < 3 sentences after removing 0 lines")
    assert c4("第一句话在这里。第二句话在这里！第三句话在这里？").drop is None


def test_lorem_ipsum_and_curly_brace_drop_the_page():
    lorem = c4(f"{S1}\nLorem ipsum dolor sit amet, consectetur.\n{S2}\n{S3}")
    assert lorem.drop[0] == "c4.lorem_ipsum"
    brace = c4(f"{S1}\nUse a dict like {{'a': 1}} in the code.\n{S2}\n{S3}")
    assert brace.drop == ("c4.curly_brace", "line: \"Use a dict like {'a': 1} in the code.\"")


def test_page_rules_only_see_lines_that_survived_the_line_rules():
    # TFDS order: the brace sits on a line without an end mark, which goes first.
    outcome = c4(f"{S1}\nfunction f() {{ return 1 }}\n{S2}\n{S3}")
    assert outcome.drop is None
    assert outcome.removed_lines == {"no_terminal_punct": 1}


def test_javascript_and_policy_lines_are_removed():
    text = (
        f"{S1}\nPlease enable JavaScript to view the comments.\n{S2}\n"
        "This site uses cookies to improve your experience.\n"
        f"Read our Privacy Policy for details.\n{S3}"
    )
    outcome = c4(text)
    assert outcome.text == f"{S1}\n{S2}\n{S3}"
    assert outcome.removed_lines == {"javascript": 1, "policy": 2}


def test_citations_are_cut():
    text = f"{S1}[1]\n{S2} [citation needed]\n{S3}[edit]"
    assert c4(text).text == f"{S1}\n{S2}\n{S3}"


def test_line_with_a_word_over_max_length_is_removed():
    text = f"{S1}\nHere is {'x' * 1001} a word.\nHere is {'x' * 1000} a word.\n{S2}\n{S3}"
    outcome = c4(text)
    assert outcome.removed_lines == {"too_long_word": 1}
    assert "x" * 1000 in outcome.text


def test_each_rule_can_be_switched_off():
    text = (
        f"Title\n{S1}\nUse JavaScript here now.\nLorem ipsum dolor sit amet.\n"
        f"{S2}\nUse {{ }} now.\n{S3}"
    )
    outcome = c4(
        text, drop_lines_without_terminal_punct=False, drop_javascript_lines=False,
        drop_lorem_ipsum=False, drop_curly_brace=False, min_words_per_line=0,
    )  # fmt: skip
    assert outcome.drop is None
    assert outcome.text == text


def test_hard_wrapped_text_needs_paragraph_mode():
    wrapped = pydoc_data.topics.topics["execmodel"]
    by_line = c4(wrapped)
    assert by_line.removed_lines["no_terminal_punct"] > 50
    by_paragraph = c4(wrapped, unit="paragraph")
    assert by_paragraph.drop is None
    kept_paragraphs = by_paragraph.text.split("\n\n")
    assert len(kept_paragraphs) > 10
    unmarked = CITATION_RE.sub("", wrapped)
    assert all(p in unmarked for p in kept_paragraphs)  # kept as written, line breaks and all
    assert "\n" in kept_paragraphs[0]


def test_blank_lines_between_kept_lines_survive():
    outcome = c4(f"{S1}\n\n\nNav bar\n\n{S2}\n{S3}")
    assert outcome.text == f"{S1}\n\n{S2}\n{S3}"


def test_edge_cases():
    assert c4("").drop == ("c4.too_few_sentences", "0 < 3 sentences after removing 0 lines")
    assert c4("   \n\n  ").drop[0] == "c4.too_few_sentences"
    assert c4("!!! ??? ...").drop[0] == "c4.too_few_sentences"
    long_line = " ".join([S1] * 5000)
    assert c4(long_line).text == long_line

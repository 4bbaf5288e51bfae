"""blocklist: word lists from files, word boundaries for spaced scripts, substrings for CJK."""

import pydoc_data.topics
from pathlib import Path

import pytest

from lmforge.data.config import BlocklistConfig
from lmforge.data.document import Doc
from lmforge.data.steps.blocklist import BlocklistStep
from lmforge.errors import UserError
from lmforge.text.blocklist import Blocklist, read_terms

ZH_PROSE = (Path(__file__).parent / "data" / "steps_zh_prose.txt").read_text(encoding="utf-8")


@pytest.fixture
def list_file(tmp_path: Path) -> Path:
    path = tmp_path / "blocked.txt"
    path.write_text(
        "# words nobody wants\nass\nBad Word  # a phrase, with a trailing comment\n\n"
        "  spam   \n赌博\n色情网站\n",
        encoding="utf-8",
    )
    return path


def doc(text: str, id: str = "d") -> Doc:
    return Doc(id, text, "test", "t:1")


def test_read_terms_skips_comments_and_blank_lines(list_file):
    assert read_terms(list_file) == ["ass", "Bad Word", "spam", "赌博", "色情网站"]


def test_word_boundaries_case_and_phrases(list_file):
    blocklist = Blocklist.from_files([list_file])
    text = "A class of Assets. You ASS! Such a bad   word, and SPAM, but not spammer or badword."
    assert [(m.term, text[m.start : m.end]) for m in blocklist.find(text)] == [
        ("ass", "ASS"),
        ("bad word", "bad   word"),
        ("spam", "SPAM"),
    ]


def test_cjk_terms_match_as_substrings(list_file):
    blocklist = Blocklist.from_files([list_file])
    text = "这里禁止赌博，也不要访问色情网站。网络赌博很危险。"
    assert [m.term for m in blocklist.find(text)] == ["赌博", "色情网站", "赌博"]
    assert blocklist.find(ZH_PROSE) == []


def test_han_characters_are_boundaries_for_spaced_terms(list_file):
    blocklist = Blocklist.from_files([list_file])
    assert [m.term for m in blocklist.find("这是spam吗")] == ["spam"]
    assert blocklist.find("这是spammer吗") == []


def test_terms_without_word_characters(tmp_path):
    path = tmp_path / "symbols.txt"
    path.write_text("f*ck\n$$$\n", encoding="utf-8")
    blocklist = Blocklist.from_files([path])
    assert [m.term for m in blocklist.find("What the f*ck, $$$ now")] == ["f*ck", "$$$"]


def test_redact(list_file):
    blocklist = Blocklist.from_files([list_file])
    assert blocklist.redact("Spam and 赌博 here, class.") == (
        "[BLOCKED] and [BLOCKED] here, class.",
        2,
    )
    assert blocklist.redact("clean") == ("clean", 0)


def test_drop_action_with_max_matches(list_file):
    step = BlocklistStep(BlocklistConfig(files=[list_file], max_matches=1))
    docs = [doc("one spam only", "a"), doc("spam spam and ass", "b"), doc(ZH_PROSE, "c")]
    result = step.process(docs)
    assert [d.id for d in result.kept] == ["a", "c"]
    assert [(d.id, reason, detail) for d, reason, detail in result.dropped] == [
        ("b", "blocklist", "3 matches, first 'spam'")
    ]
    assert result.counters == {"matches": 4}


def test_default_drops_on_the_first_match(list_file):
    result = BlocklistStep(BlocklistConfig(files=[list_file])).process([doc("no spam please")])
    assert result.dropped[0][1:] == ("blocklist", "1 matches, first 'spam'")


def test_redact_action_keeps_documents(list_file):
    step = BlocklistStep(BlocklistConfig(files=[list_file], action="redact"))
    docs = [doc("Bad word, spam.", "a"), doc("Nothing here.", "b")]
    result = step.process(docs)
    assert [d.text for d in result.kept] == ["[BLOCKED], [BLOCKED].", "Nothing here."]
    assert result.modified == 1 and not result.dropped


def test_no_files_keeps_everything():
    step = BlocklistStep(BlocklistConfig())
    docs = [doc(text) for text in pydoc_data.topics.topics.values()]
    result = step.process(docs)
    assert result.kept == docs and not result.dropped and result.modified == 0


def test_real_english_text_with_a_realistic_list(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("idiot\nstupid\nshut up\n", encoding="utf-8")
    step = BlocklistStep(BlocklistConfig(files=[path]))
    docs = [doc(text) for text in pydoc_data.topics.topics.values()]
    assert len(step.process(docs).kept) == len(docs)


def test_missing_or_undecodable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"data\.blocklist\.files: no such file .*nope\.txt"):
        BlocklistStep(BlocklistConfig(files=[tmp_path / "nope.txt"]))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"data\.blocklist\.files: .*latin1\.txt.* is not UTF-8"):
        BlocklistStep(BlocklistConfig(files=[latin1]))


def test_edge_cases(list_file):
    blocklist = Blocklist.from_files([list_file])
    assert blocklist.find("") == []
    assert blocklist.find("😀 !!! ...") == []
    assert len(blocklist.find("spam " * 10_000)) == 10_000


def test_longest_term_wins_and_prefixes_still_match():
    blocklist = Blocklist(["bad", "bad word", "badger", "色情", "色情网站"])
    text = "A bad word, a badger, just bad. 色情网站和色情。badly"
    assert [m.term for m in blocklist.find(text)] == [
        "bad word", "badger", "bad", "色情网站", "色情"
    ]  # fmt: skip


def test_thousands_of_terms():
    terms = [f"term{i:05d}x" for i in range(5000)]
    blocklist = Blocklist(terms)
    assert [m.term for m in blocklist.find("a term04999x and term5000x")] == ["term04999x"]

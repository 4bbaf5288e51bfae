"""The quality step: Gopher quality -> Gopher repetition -> C4, namespaced reasons, counters."""

import pydoc_data.topics
import re
from pathlib import Path

from lmforge.data.config import QualityConfig
from lmforge.data.document import Doc
from lmforge.data.steps.quality import Quality

ZH_PROSE = (Path(__file__).parent / "data" / "steps_zh_prose.txt").read_text(encoding="utf-8")


def web_prose(topic: str) -> str:
    paragraphs = []
    for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
        if not any(line.startswith((" ", "*", "-", "+", "=")) for line in block.split("\n")):
            paragraph = " ".join(block.split())
            if paragraph.endswith(".") and "{" not in paragraph and "[" not in paragraph:
                paragraphs.append(paragraph)
    return "\n\n".join(paragraphs[:8])


def run(texts: list[str], cfg: QualityConfig | None = None):
    docs = [Doc(f"d{i}", text, "test", f"t:{i}") for i, text in enumerate(texts)]
    return Quality(cfg or QualityConfig()).process(docs)


def test_clean_english_and_chinese_are_kept_unchanged():
    texts = [web_prose("execmodel"), web_prose("naming"), ZH_PROSE.strip()]
    result = run(texts)
    assert [d.text for d in result.kept] == texts
    assert result.modified == 0 and not result.dropped


def test_c4_line_removal_modifies_and_is_counted():
    prose = web_prose("execmodel")
    result = run([f"Home | Docs | Blog\n\n{prose}\n\nShare this page"])
    assert [d.text for d in result.kept] == [prose]
    assert result.modified == 1
    assert result.counters == {"c4.lines_removed.no_terminal_punct": 2}


def test_each_family_reports_namespaced_reasons():
    prose = web_prose("naming")
    short = "Too short to be a document, with the words of it."
    repeated = "\n".join([prose.split("\n\n")[0]] * 4)
    words = re.sub(r"[.!?]", "", prose).split()
    no_sentences = "\n".join(" ".join(words[i : i + 8]) for i in range(0, len(words), 8))
    lines = no_sentences.count("\n") + 1
    result = run([short, repeated, no_sentences])
    reasons = [(d.id, reason, detail) for d, reason, detail in result.dropped]
    assert reasons == [
        ("d0", "gopher_quality.min_words", "11 < 50"),
        ("d1", "gopher_repetition.dup_line_fraction", "0.75 > 0.30"),
        ("d2", "c4.too_few_sentences", f"0 < 3 sentences after removing {lines} lines"),
    ]


def test_sub_rules_can_be_disabled():
    short = "Too short to be a document, but it has three. Sentences in it. Yes it does."
    cfg = QualityConfig()
    cfg.gopher_quality.enabled = False
    assert [d.id for d in run([short], cfg).kept] == ["d0"]
    cfg.c4.min_sentences = 4
    assert run([short], cfg).dropped[0][1] == "c4.too_few_sentences"
    cfg.c4.enabled = False
    cfg.gopher_repetition.enabled = False
    assert len(run([""], cfg).kept) == 1


def test_paragraph_mode_keeps_hard_wrapped_docs_that_line_mode_drops():
    topics = pydoc_data.topics.topics
    texts = [topics[name] for name in ("execmodel", "naming", "import", "try", "assignment")]
    by_line = run(texts)
    cfg = QualityConfig()
    cfg.c4.unit = "paragraph"
    by_paragraph = run(texts, cfg)
    kept_chars = sum(len(d.text) for d in by_paragraph.kept)
    assert kept_chars > 3 * sum(len(d.text) for d in by_line.kept)
    assert any(k.startswith("c4.paragraphs_removed.") for k in by_paragraph.counters)


def test_real_corpus_every_document_is_kept_or_dropped_with_a_known_reason():
    texts = list(pydoc_data.topics.topics.values())
    result = run(texts)
    assert len(result.kept) + len(result.dropped) == len(texts)
    assert result.dropped and result.kept
    for _, reason, detail in result.dropped:
        assert re.fullmatch(r"(gopher_quality|gopher_repetition|c4)\.[a-z0-9_]+", reason)
        assert detail

"""TF-IDF domain relevance on English and Chinese, reference loading and its errors."""

from __future__ import annotations

import gzip
import json
from pydoc_data.topics import topics

import numpy as np
import pytest

from dedup_corpus import zh_paragraphs
from lmforge.data.relevance import RelevanceScorer, terms
from lmforge.errors import UserError

OFF_DOMAIN_EN = [
    "Preheat the oven to two hundred degrees. Mix the flour, butter and sugar in a large bowl "
    "until the dough comes together, then chill it for half an hour before rolling it out.",
    "The home team scored twice in the second half and held on to win the championship final, "
    "while their goalkeeper saved a penalty in the last minute of the match.",
    "Migrating birds follow the coast every autumn, resting on the wetlands for a few days "
    "before they cross the open sea towards their winter grounds in the south.",
    "Regular sleep, a varied diet with plenty of vegetables, and a walk every day do more for "
    "your health than most supplements sold in pharmacies.",
    "The old castle on the hill was built in the twelfth century and survived three sieges "
    "before the family that owned it sold the land to the town.",
    "Our hotel room had a view over the harbour, and every morning fishing boats returned with "
    "their catch while the market stalls opened along the quay.",
]


def paragraphs(topic: str) -> list[str]:
    return [p.strip() for p in topics[topic].split("\n\n") if len(p.split()) >= 15]


def test_english_in_domain_documents_rank_first(tmp_path):
    reference = tmp_path / "python.txt"
    reference.write_text("\n\n".join(paragraphs("try") + paragraphs("exceptions")))
    in_domain = paragraphs("raise")[:6]
    scorer = RelevanceScorer([reference])
    scores = scorer.score(in_domain + OFF_DOMAIN_EN)
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    assert scores[:6].min() > scores[6:].max()


def test_chinese_in_domain_documents_rank_first(tmp_path):
    by_topic = zh_paragraphs()
    reference = tmp_path / "zh.jsonl"
    rows = [json.dumps({"text": p, "id": k}, ensure_ascii=False)
            for k, p in enumerate(by_topic["programming"][:4])]  # fmt: skip
    reference.write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    in_domain = by_topic["programming"][4:]
    others = [p for topic, ps in by_topic.items() if topic != "programming" for p in ps]
    scores = RelevanceScorer([reference]).score(in_domain + others)
    top = np.argsort(-scores)[: len(in_domain)]
    assert (top < len(in_domain)).sum() >= len(in_domain) - 1
    assert np.median(scores[: len(in_domain)]) > 1.5 * np.median(scores[len(in_domain) :])


def test_off_domain_words_lower_the_score_and_batches_do_not_matter(tmp_path):
    reference = tmp_path / "python.txt.gz"
    with gzip.open(reference, "wt") as f:
        f.write("\n\n".join(paragraphs("try") + paragraphs("exceptions")))
    scorer = RelevanceScorer([reference])
    doc = paragraphs("raise")[0]
    diluted = doc + "\n\n" + " ".join(OFF_DOMAIN_EN)
    alone = scorer.score([doc])[0]
    together = scorer.score([diluted, doc, *OFF_DOMAIN_EN])
    assert together[1] == pytest.approx(alone, abs=1e-6)
    assert together[0] < 0.9 * alone  # a vocabulary fit on the reference would raise it
    assert scorer.score([]).shape == (0,)


def test_terms_split_words_and_chinese_characters():
    assert terms("Python 是一种语言, OK") == [
        "python", "是", "一", "种", "语", "言", "是一", "一种", "种语", "语言", "ok",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "content,name,message",
    [
        (None, "missing.txt", "does not exist"),
        ("\n\n  \n", "empty.txt", "holds no text"),
        ("some text", "notes.md", "neither .txt nor .jsonl"),
        ('{"text": "ok"}\n{broken\n', "bad.jsonl", r"bad\.jsonl:2 is not valid JSON"),
        ('{"body": "no text field"}\n', "nofield.jsonl", r'nofield\.jsonl:1 has no string "text"'),
    ],
)
def test_reference_mistakes_name_the_config_key(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=rf"data\.relevance\.reference.*{message}"):
        RelevanceScorer([path])


def test_no_reference_files_is_a_user_error():
    with pytest.raises(UserError, match=r"data\.relevance\.reference is empty"):
        RelevanceScorer([])

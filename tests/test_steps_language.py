"""language: lingua detection, allowed languages, minimum confidence, annotations."""

import pydoc_data.topics
from pathlib import Path

import pytest

from lmforge.data.config import LanguageConfig
from lmforge.data.document import Doc
from lmforge.data.steps.language import DEFAULT_CANDIDATES, LanguageDetector, LanguageId
from lmforge.errors import UserError

DATA = Path(__file__).parent / "data"
ZH_PROSE = (DATA / "steps_zh_prose.txt").read_text(encoding="utf-8")
ZH_CLASSICAL = (DATA / "steps_zh_classical.txt").read_text(encoding="utf-8")
ENGLISH = pydoc_data.topics.topics["execmodel"]
OTHERS = {
    "de": "Die Stadt liegt an einem breiten Fluss, und im Sommer sitzen die Menschen bis spät "
    "in den Abend in den Gärten am Ufer. Niemand hat es eilig.",
    "fr": "La ville est située au bord d'un large fleuve, et en été les habitants restent tard "
    "le soir dans les jardins au bord de l'eau.",
    "ja": "町は広い川のほとりにあり、夏になると人々は夜遅くまで川岸の庭で過ごします。"
    "誰も急いでいません。",
    "ko": "도시는 넓은 강가에 있고, 여름이면 사람들은 밤늦게까지 강변 정원에 앉아 있습니다.",
    "ru": "Город стоит на широкой реке, и летом люди допоздна сидят в садах на берегу.",
}


def doc(text: str) -> Doc:
    return Doc("d", text, "test", "t:1")


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def test_default_candidates_cover_common_languages():
    assert {"en", "zh", "ja", "ko", "de", "fr", "es", "ru"} <= set(DEFAULT_CANDIDATES)
    assert 20 <= len(DEFAULT_CANDIDATES) <= 25


@pytest.mark.parametrize(
    ("text", "code"),
    [(ENGLISH, "en"), (ZH_PROSE, "zh"), (ZH_CLASSICAL, "zh"), *((t, c) for c, t in OTHERS.items())],
)
def test_detects_real_text(detector, text, code):
    found, score = detector.detect(text)
    assert found == code
    assert score > 0.9


def test_mixed_chinese_with_english_terms_is_chinese(detector):
    found, _ = detector.detect("我们使用 Python 和 PyTorch 训练模型，然后用 FastAPI 部署服务。")
    assert found == "zh"


def test_text_without_letters_is_undetermined(detector):
    assert detector.detect("") == (None, 0.0)
    assert detector.detect("12345 !!! 😀😀") == (None, 0.0)


def test_only_a_prefix_is_read():
    short = LanguageDetector(max_chars=200)
    assert short.detect(ZH_PROSE[:300] + ENGLISH)[0] == "zh"
    assert LanguageDetector().detect(ZH_PROSE[:300] + ENGLISH * 3)[0] == "zh"


def test_step_annotates_and_keeps_every_language_by_default():
    step = LanguageId(LanguageConfig())
    docs = [doc(ENGLISH), doc(ZH_PROSE), doc(OTHERS["de"])]
    result = step.process(docs)
    assert len(result.kept) == 3
    assert [d.annotations["language"] for d in docs] == ["en", "zh", "de"]
    assert all(d.annotations["language_score"] > 0.9 for d in docs)


def test_allowed_languages_drop_the_rest_with_the_reason():
    step = LanguageId(LanguageConfig(allowed=["en", "zh"]))
    result = step.process([doc(ENGLISH), doc(ZH_PROSE), doc(OTHERS["fr"])])
    assert [d.annotations["language"] for d in result.kept] == ["en", "zh"]
    [(_, reason, detail)] = result.dropped
    assert reason == "not_allowed"
    assert detail.startswith("fr (") and detail.endswith(") not in [en, zh]")


def test_allowed_languages_join_the_candidates():
    step = LanguageId(LanguageConfig(candidates=["en", "zh"], allowed=["ro"]))
    assert step.detector.codes == ("en", "ro", "zh")


def test_minimum_confidence():
    step = LanguageId(LanguageConfig(min_confidence=0.999999, candidates=["en", "de"]))
    reason, detail = step.check(doc("Hello"))
    assert reason == "low_confidence"
    assert detail.endswith("< 1.00")
    assert LanguageId(LanguageConfig(min_confidence=0.0)).check(doc("😀")) is None


def test_undetermined_is_dropped_when_anything_is_required():
    assert LanguageId(LanguageConfig()).check(doc("12345")) == (
        "undetermined",
        "no text in any candidate language",
    )


def test_unknown_codes_are_user_errors_naming_the_key():
    with pytest.raises(UserError, match=r"data\.language\.candidates: 'xx'"):
        LanguageId(LanguageConfig(candidates=["en", "xx"]))
    with pytest.raises(UserError, match=r"data\.language\.allowed: 'english'"):
        LanguageId(LanguageConfig(allowed=["english"]))

"""The eval text metrics agree with the libraries they stand for: sacrebleu, rouge-score,
lm-eval and sklearn; the stderr and resampling helpers are deterministic and exact."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import sacrebleu
from lm_eval.api import metrics as lm_metrics
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from lmforge.errors import UserError
from lmforge.eval.metrics import (
    ACCURACY,
    BLEU,
    CHRF,
    EXACT_MATCH,
    MACRO_F1,
    ROUGE1,
    ROUGE2,
    ROUGE_METRICS,
    ROUGEL,
    CjkRougeTokenizer,
    ExactMatchOptions,
    corpus_from_indices,
    exact_match,
    resampled_value,
    score_classification,
    score_generation,
)

PREDICTIONS = [
    "The cat sat on the mat.",
    "There is a dog in the garden",
    "I like to eat apples and bananas.",
    "He read the book yesterday evening.",
    "The weather is nice today, isn't it?",
    "completely unrelated output",
]
REFERENCES = [
    ["The cat is sitting on the mat.", "A cat sat on the mat."],
    ["A dog is in the garden.", "There is a dog in the yard"],
    ["I love eating apples and bananas.", "I like eating bananas and apples."],
    ["Yesterday evening he read the book.", "He was reading the book last night."],
    ["Today the weather is nice, isn't it?", "It is a nice day today, right?"],
    ["The meeting starts at noon.", "The meeting begins at 12."],
]
# Several examples have one reference, some two: sacrebleu pads the short ones with None.
RAGGED_REFERENCES = [refs[:1] if i % 2 else refs for i, refs in enumerate(REFERENCES)]
ZH_PREDICTIONS = ["我爱北京天安门。", "今天天气很好", "他在学习Python编程"]
ZH_REFERENCES = [["我爱北京天安门"], ["今天的天气很好。"], ["他正在学习Python编程。"]]


def streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's reference layout, built here independently of the module under test."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


@pytest.mark.parametrize("references", [REFERENCES, RAGGED_REFERENCES])
def test_bleu_and_chrf_equal_sacrebleu_corpus_scores(references):
    results = score_generation(PREDICTIONS, references, [BLEU, CHRF], bootstrap_iters=0)
    expected_bleu = sacrebleu.corpus_bleu(PREDICTIONS, streams(references)).score
    expected_chrf = sacrebleu.corpus_chrf(PREDICTIONS, streams(references)).score
    assert 0 < expected_bleu < 100
    assert results[BLEU].value == pytest.approx(expected_bleu, abs=1e-9)
    assert results[CHRF].value == pytest.approx(expected_chrf, abs=1e-9)
    assert len(results[BLEU].stats) == len(PREDICTIONS)
    assert results[BLEU].per_example == []


def test_bleu_matches_lm_eval_bleu_aggregation():
    items = list(zip(REFERENCES, PREDICTIONS, strict=True))
    result = score_generation(PREDICTIONS, REFERENCES, [BLEU], bootstrap_iters=0)[BLEU]
    assert result.value == pytest.approx(lm_metrics.bleu(items), abs=1e-9)


def test_single_string_references_equal_one_item_lists():
    single = [refs[0] for refs in REFERENCES]
    as_strings = score_generation(PREDICTIONS, single, [BLEU], bootstrap_iters=0)[BLEU]
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [single]).score
    assert as_strings.value == pytest.approx(expected, abs=1e-9)


def test_bleu_uses_zh_tokenizer_for_chinese_references_unless_told_otherwise():
    auto = score_generation(ZH_PREDICTIONS, ZH_REFERENCES, [BLEU], bootstrap_iters=0)[BLEU]
    zh = sacrebleu.corpus_bleu(ZH_PREDICTIONS, streams(ZH_REFERENCES), tokenize="zh").score
    thirteen_a = sacrebleu.corpus_bleu(ZH_PREDICTIONS, streams(ZH_REFERENCES)).score
    assert zh != pytest.approx(thirteen_a)
    assert auto.value == pytest.approx(zh, abs=1e-9)
    chosen = score_generation(
        ZH_PREDICTIONS, ZH_REFERENCES, [BLEU], bleu_tokenize="13a", bootstrap_iters=0
    )[BLEU]
    assert chosen.value == pytest.approx(thirteen_a, abs=1e-9)


def test_unknown_bleu_tokenizer_is_a_user_error():
    with pytest.raises(UserError, match=r"unknown BLEU tokenizer 'nope'; known: .*13a"):
        score_generation(PREDICTIONS, REFERENCES, [BLEU], bleu_tokenize="nope")


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score_on_english(use_stemmer):
    results = score_generation(
        PREDICTIONS, REFERENCES, list(ROUGE_METRICS), rouge_use_stemmer=use_stemmer
    )
    scorer = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=use_stemmer)
    for name in ROUGE_METRICS:
        expected = [
            scorer.score_multi(refs, pred)[name].fmeasure
            for pred, refs in zip(PREDICTIONS, REFERENCES, strict=True)
        ]
        assert results[name].per_example == pytest.approx(expected, abs=1e-12)
        assert results[name].value == pytest.approx(np.mean(expected), abs=1e-12)
        assert 0 < results[name].value < 1


def test_rouge_single_reference_equals_rouge_score():
    single = [refs[1] for refs in REFERENCES]
    result = score_generation(PREDICTIONS, single, [ROUGEL])[ROUGEL]
    scorer = rouge_scorer.RougeScorer([ROUGEL])
    pairs = zip(PREDICTIONS, single, strict=True)
    expected = [scorer.score(ref, pred)[ROUGEL].fmeasure for pred, ref in pairs]
    assert result.per_example == pytest.approx(expected, abs=1e-12)


def test_rouge_on_chinese_is_per_character():
    results = score_generation(["我爱北京"], ["我爱上海"], list(ROUGE_METRICS))
    assert results[ROUGE1].value == pytest.approx(0.5)  # 我, 爱 of 4 characters each
    assert results[ROUGE2].value == pytest.approx(1 / 3)  # 我爱 of 3 bigrams each
    assert results[ROUGEL].value == pytest.approx(0.5)  # LCS 我爱
    plain = rouge_scorer.RougeScorer([ROUGE1]).score("我爱上海", "我爱北京")[ROUGE1]
    assert plain.fmeasure == 0.0  # the rouge-score behaviour this fixes


def test_rouge_on_mixed_chinese_and_latin_text():
    tokens = CjkRougeTokenizer().tokenize("他在学习Python编程, v2!")
    assert tokens == ["他", "在", "学", "习", "python", "编", "程", "v2"]
    result = score_generation(ZH_PREDICTIONS, ZH_REFERENCES, [ROUGE1])[ROUGE1]
    assert all(0 < score <= 1 for score in result.per_example)


EXACT_MATCH_CASES = [
    ("Paris", "paris"),
    ("Paris.", "Paris"),
    (" Paris", "Paris"),
    ("The answer is 42", "the answer is 42."),
    ("3,000", "3000"),
    ("abc123", "abc"),
    ("“Paris”", "Paris"),  # curly quotes are not in string.punctuation
    ("don't", "dont"),
    ("Answer: B", "B"),
    ("answer: b", "B"),
    ("a  b", "a b"),
    ("ÉCOLE", "école"),
    ("", ""),
]
REGEX_SETS = [(), (r"^answer:\s*",), (r"\s+", r"[0-9]")]


@pytest.mark.parametrize("regexes", REGEX_SETS)
@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_exact_match_equals_lm_eval(flags, regexes):
    ignore_case, ignore_punctuation, ignore_numbers = flags
    options = ExactMatchOptions(ignore_case, ignore_punctuation, ignore_numbers, regexes)
    for prediction, reference in EXACT_MATCH_CASES:
        expected = lm_metrics.exact_match_hf_evaluate(
            predictions=[prediction],
            references=[reference],
            regexes_to_ignore=list(regexes) or None,
            ignore_case=ignore_case,
            ignore_punctuation=ignore_punctuation,
            ignore_numbers=ignore_numbers,
        )["exact_match"]
        assert exact_match(prediction, [reference], options) == expected, (prediction, reference)


def test_exact_match_strip_runs_after_the_other_options():
    options = ExactMatchOptions(ignore_punctuation=True, strip=True)
    assert exact_match("Paris .", ["Paris"], options) == 1.0
    assert exact_match("Paris .", ["Paris"], ExactMatchOptions(ignore_punctuation=True)) == 0.0


def test_exact_match_counts_any_matching_reference():
    options = ExactMatchOptions(ignore_case=True)
    references = [["London", "paris"], ["Nice"]]
    result = score_generation(
        ["Paris", "Lyon"], references, [EXACT_MATCH], exact_match_options=options
    )[EXACT_MATCH]
    assert result.per_example == [1.0, 0.0]
    assert result.value == 0.5


def test_mean_metric_stderr_equals_lm_eval_mean_stderr():
    results = score_generation(PREDICTIONS, REFERENCES, [ROUGE1, ROUGEL])
    for result in results.values():
        assert result.stderr == pytest.approx(lm_metrics.mean_stderr(result.per_example), rel=1e-12)
        assert result.stderr > 0


GOLD = ["a", "b", "a", "c", "b", "a", "c", "b"]
PREDICTED = ["a", "b", "c", "c", "d", "b", "c", "b"]  # "d" is never gold


def sklearn_macro_f1(gold, predicted) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that recall for "d" is ill-defined
        return f1_score(gold, predicted, average="macro")


def test_accuracy_and_macro_f1_equal_sklearn():
    results = score_classification(PREDICTED, GOLD, [ACCURACY, MACRO_F1], bootstrap_iters=0)
    assert results[ACCURACY].value == pytest.approx(5 / 8)
    assert results[ACCURACY].stderr == pytest.approx(
        lm_metrics.mean_stderr(results[ACCURACY].per_example), rel=1e-12
    )
    assert results[MACRO_F1].value == pytest.approx(sklearn_macro_f1(GOLD, PREDICTED), abs=1e-12)
    assert results[MACRO_F1].value < results[ACCURACY].value


def test_macro_f1_with_integer_labels():
    gold, predicted = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    result = score_classification(predicted, gold, [MACRO_F1], bootstrap_iters=0)[MACRO_F1]
    assert result.value == pytest.approx(f1_score(gold, predicted, average="macro"), abs=1e-12)


def test_bootstrap_stderr_is_deterministic_with_a_seed():
    def bleu_stderr(seed: int) -> float:
        results = score_generation(PREDICTIONS, REFERENCES, [BLEU, CHRF], seed=seed)
        return results[BLEU].stderr

    first, again, other = bleu_stderr(7), bleu_stderr(7), bleu_stderr(8)
    assert first == again
    assert first != other
    assert first > 0


def test_bootstrap_stderr_agrees_with_lm_eval_bootstrap(monkeypatch):
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")
    items = list(zip(REFERENCES, PREDICTIONS, strict=True))
    expected = lm_metrics.bootstrap_stderr(lm_metrics.bleu, items, iters=1000)
    ours = score_generation(PREDICTIONS, REFERENCES, [BLEU])[BLEU].stderr
    assert ours == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize(
    ("metric", "predictions", "references", "tokenize"),
    [
        (BLEU, PREDICTIONS, RAGGED_REFERENCES, "13a"),
        (CHRF, PREDICTIONS, RAGGED_REFERENCES, None),
        (BLEU, ZH_PREDICTIONS, ZH_REFERENCES, "zh"),
    ],
)
def test_corpus_from_indices_equals_sacrebleu_on_the_resampled_lists(
    metric, predictions, references, tokenize
):
    stats = score_generation(predictions, references, [metric], bootstrap_iters=0)[metric].stats
    rng = np.random.default_rng(0)
    for _ in range(5):
        indices = rng.integers(0, len(predictions), size=len(predictions))
        hyps = [predictions[i] for i in indices]
        refs = streams([references[i] for i in indices])
        if metric == BLEU:
            expected = sacrebleu.corpus_bleu(hyps, refs, tokenize=tokenize).score
        else:
            expected = sacrebleu.corpus_chrf(hyps, refs).score
        assert corpus_from_indices(metric, stats, indices) == pytest.approx(expected, abs=1e-9)


def test_macro_f1_from_indices_equals_sklearn_on_the_resampled_labels():
    result = score_classification(PREDICTED, GOLD, [MACRO_F1], bootstrap_iters=0)[MACRO_F1]
    rng = np.random.default_rng(1)
    for _ in range(5):
        indices = rng.integers(0, len(GOLD), size=len(GOLD))
        expected = sklearn_macro_f1([GOLD[i] for i in indices], [PREDICTED[i] for i in indices])
        assert resampled_value(result, indices) == pytest.approx(expected, abs=1e-12)


def test_resampled_value_of_a_mean_metric_is_the_resampled_mean():
    result = score_generation(PREDICTIONS, REFERENCES, [ROUGE2])[ROUGE2]
    indices = [0, 0, 3, 5]
    expected = np.mean([result.per_example[i] for i in indices])
    assert resampled_value(result, indices) == pytest.approx(expected, abs=1e-12)


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(UserError, match="unknown generation metric 'bleurt'; known: exact_match, "):
        score_generation(PREDICTIONS, REFERENCES, ["bleurt"])
    with pytest.raises(UserError, match="unknown generation metric 'accuracy'"):
        score_generation(PREDICTIONS, REFERENCES, [ACCURACY])
    with pytest.raises(UserError, match="unknown classification metric 'bleu'; known: accuracy"):
        score_classification(PREDICTED, GOLD, [BLEU])


def test_mismatched_or_empty_inputs_are_user_errors():
    with pytest.raises(UserError, match="6 predictions but 2 references"):
        score_generation(PREDICTIONS, REFERENCES[:2], [BLEU])
    with pytest.raises(UserError, match="no predictions"):
        score_classification([], [], [ACCURACY])
    with pytest.raises(UserError, match="at least one reference"):
        score_generation(["x"], [[]], [ROUGE1])

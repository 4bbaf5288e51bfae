"""Text metrics for `lmforge eval`: per-example scores, corpus values and standard errors.

Scales: BLEU and chrF are on sacrebleu's 0-100 scale; ROUGE, exact match, accuracy and
macro F1 are in 0..1.

Mean metrics (exact_match, rouge1, rouge2, rougeL, accuracy) give every example a score; the
corpus value is their mean and the stderr is sample std / sqrt(n), as lm-eval's
`mean_stderr`. Corpus metrics (bleu, chrf, macro_f1) are not means of example scores, so each
example keeps sufficient statistics instead: the corpus value comes from their sum, the
stderr from a seeded bootstrap over examples, and `corpus_from_indices` recomputes the value
on any resample of examples from the statistics alone (for paired bootstrap tests).

- BLEU and chrF are sacrebleu's, with its default settings, and equal
  `sacrebleu.corpus_bleu` / `corpus_chrf`. BLEU tokenizes with "zh" when any reference holds
  CJK characters (13a leaves an unspaced Chinese sentence as one token), unless the caller
  names a tokenizer.
- ROUGE is rouge-score's F-measure, without stemming unless asked. rouge-score keeps only
  [a-z0-9] runs and scores Chinese as 0, so an example whose prediction or references hold
  CJK characters is tokenized by `CjkRougeTokenizer` instead: one token per CJK character,
  lowercased [a-z0-9] runs as words. With several references the best one counts.
- Exact match has lm-eval's options, applied in lm-eval's order, plus `strip` last; an
  example with several references matches when any of them does (lm-eval's multi-target rule).
- Macro F1 is sklearn's, over the labels seen in the gold labels and predictions.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import sacrebleu

from lmforge.errors import UserError
from lmforge.text.cjk import CJK_RANGES, has_cjk

EXACT_MATCH = "exact_match"
BLEU = "bleu"
CHRF = "chrf"
ROUGE1 = "rouge1"
ROUGE2 = "rouge2"
ROUGEL = "rougeL"
ACCURACY = "accuracy"
MACRO_F1 = "macro_f1"

GENERATION_METRICS = (EXACT_MATCH, BLEU, CHRF, ROUGE1, ROUGE2, ROUGEL)
CLASSIFICATION_METRICS = (ACCURACY, MACRO_F1)
ROUGE_METRICS = (ROUGE1, ROUGE2, ROUGEL)
CORPUS_METRICS = (BLEU, CHRF, MACRO_F1)

DEFAULT_BOOTSTRAP_ITERS = 1000
DEFAULT_SEED = 1234

Label = str | int

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_DIGITS_TABLE = str.maketrans("", "", string.digits)
_CJK_ROUGE_TOKEN = re.compile(f"[{CJK_RANGES}]|[a-z0-9]+")


@dataclass(frozen=True)
class MetricResult:
    """One metric over a corpus, with what a paired bootstrap needs to resample it."""

    name: str
    value: float
    stderr: float  # nan when it cannot be estimated (one example, or bootstrap_iters < 2)
    per_example: list[float]  # mean metrics: each example's score; corpus metrics: empty
    stats: list[list[int]]  # corpus metrics: each example's sufficient statistics; else empty


@dataclass(frozen=True)
class ExactMatchOptions:
    """lm-eval's exact_match options, plus `strip` (applied after them)."""

    ignore_case: bool = False
    ignore_punctuation: bool = False
    ignore_numbers: bool = False
    regexes_to_ignore: tuple[str, ...] = ()
    strip: bool = False


DEFAULT_EXACT_MATCH = ExactMatchOptions()


class CjkRougeTokenizer:
    """rouge-score tokens for CJK text: each CJK character alone, lowercased [a-z0-9] runs."""

    def tokenize(self, text: str) -> list[str]:
        return _CJK_ROUGE_TOKEN.findall(text.lower())


def normalize_for_exact_match(text: str, options: ExactMatchOptions) -> str:
    """Apply the options in lm-eval's order: regexes, case, punctuation, digits; then strip."""
    for pattern in options.regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if options.ignore_case:
        text = text.lower()
    if options.ignore_punctuation:
        text = text.translate(_PUNCTUATION_TABLE)
    if options.ignore_numbers:
        text = text.translate(_DIGITS_TABLE)
    if options.strip:
        text = text.strip()
    return text


def exact_match(
    prediction: str, references: Sequence[str], options: ExactMatchOptions = DEFAULT_EXACT_MATCH
) -> float:
    """1.0 when the normalized prediction equals any normalized reference, else 0.0."""
    normalized = normalize_for_exact_match(prediction, options)
    return float(any(normalize_for_exact_match(r, options) == normalized for r in references))


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_METRICS,
    use_stemmer: bool = False,
) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures, best reference per example, CJK examples per character."""
    from rouge_score import rouge_scorer  # imports nltk: a second, so only when scored

    plain = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    cjk = rouge_scorer.RougeScorer(list(rouge_types), tokenizer=CjkRougeTokenizer())
    scores: dict[str, list[float]] = {rouge_type: [] for rouge_type in rouge_types}
    for prediction, refs in zip(predictions, references, strict=True):
        uses_cjk = has_cjk(prediction) or any(has_cjk(ref) for ref in refs)
        best = (cjk if uses_cjk else plain).score_multi(list(refs), prediction)
        for rouge_type in rouge_types:
            scores[rouge_type].append(best[rouge_type].fmeasure)
    return scores


def sacrebleu_stats(
    metric: str,
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bleu_tokenize: str | None = None,
) -> list[list[int]]:
    """Each example's sacrebleu sufficient statistics for `bleu` or `chrf`."""
    tokenize = _bleu_tokenizer(references, bleu_tokenize) if metric == BLEU else None
    scorer = _sacrebleu_scorer(metric, tokenize)
    return scorer._extract_corpus_statistics(list(predictions), _reference_streams(references))


def macro_f1_stats(predictions: Sequence[Label], labels: Sequence[Label]) -> list[list[int]]:
    """Each example as [gold id, predicted id], ids numbering the labels seen in either."""
    ids = {label: i for i, label in enumerate(dict.fromkeys([*labels, *predictions]))}
    return [[ids[gold], ids[pred]] for gold, pred in zip(labels, predictions, strict=True)]


def corpus_from_indices(
    metric: str, stats: Sequence[Sequence[int]] | np.ndarray, indices: Sequence[int] | np.ndarray
) -> float:
    """The corpus value of `metric` (bleu, chrf or macro_f1) on the examples at `indices`.

    Repeats are allowed, so a bootstrap resample is scored without re-reading any text.
    """
    picked = np.asarray(stats, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
    if metric == MACRO_F1:
        from sklearn.metrics import f1_score

        return float(f1_score(picked[:, 0], picked[:, 1], average="macro", zero_division=0.0))
    totals = picked.sum(axis=0).tolist()
    return float(_sacrebleu_scorer(metric, None)._compute_score_from_stats(totals).score)


def bootstrap_stderr(
    metric: str,
    stats: Sequence[Sequence[int]],
    iters: int = DEFAULT_BOOTSTRAP_ITERS,
    seed: int = DEFAULT_SEED,
) -> float:
    """Sample std of the corpus value over `iters` seeded resamples of the examples.

    As lm-eval's bootstrap_stderr, but numpy-seeded so a run repeats exactly.
    """
    if iters < 2:
        return math.nan
    table = np.asarray(stats, dtype=np.int64)
    rng = np.random.default_rng(seed)
    values = [
        corpus_from_indices(metric, table, rng.integers(0, len(table), size=len(table)))
        for _ in range(iters)
    ]
    return float(np.std(values, ddof=1))


def mean_stderr(scores: Sequence[float]) -> float:
    """Sample std / sqrt(n), as lm-eval's mean_stderr; nan for fewer than two scores."""
    if len(scores) < 2:
        return math.nan
    return float(np.std(scores, ddof=1) / math.sqrt(len(scores)))


def resampled_value(result: MetricResult, indices: Sequence[int]) -> float:
    """`result`'s corpus value on the examples at `indices`, for either kind of metric."""
    if result.name in CORPUS_METRICS:
        return corpus_from_indices(result.name, result.stats, indices)
    return float(np.mean([result.per_example[i] for i in indices]))


def score_generation(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    metrics: Sequence[str],
    *,
    exact_match_options: ExactMatchOptions = DEFAULT_EXACT_MATCH,
    bleu_tokenize: str | None = None,
    rouge_use_stemmer: bool = False,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    seed: int = DEFAULT_SEED,
) -> dict[str, MetricResult]:
    """Score generated texts against one reference (a str) or several (a list) per example."""
    _check_metrics(metrics, GENERATION_METRICS, "generation")
    refs = _reference_lists(predictions, references)
    rouge_types = [name for name in ROUGE_METRICS if name in metrics]
    rouge = rouge_scores(predictions, refs, rouge_types, rouge_use_stemmer) if rouge_types else {}
    results: dict[str, MetricResult] = {}
    for name in metrics:
        if name in (BLEU, CHRF):
            stats = sacrebleu_stats(name, predictions, refs, bleu_tokenize)
            results[name] = _corpus_result(name, stats, bootstrap_iters, seed)
        elif name == EXACT_MATCH:
            pairs = zip(predictions, refs, strict=True)
            scores = [exact_match(p, r, exact_match_options) for p, r in pairs]
            results[name] = _mean_result(name, scores)
        else:
            results[name] = _mean_result(name, rouge[name])
    return results


def score_classification(
    predictions: Sequence[Label],
    labels: Sequence[Label],
    metrics: Sequence[str],
    *,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    seed: int = DEFAULT_SEED,
) -> dict[str, MetricResult]:
    """Score predicted labels against gold labels, one each per example."""
    _check_metrics(metrics, CLASSIFICATION_METRICS, "classification")
    _check_lengths(predictions, labels)
    results: dict[str, MetricResult] = {}
    for name in metrics:
        if name == ACCURACY:
            scores = [float(p == g) for p, g in zip(predictions, labels, strict=True)]
            results[name] = _mean_result(name, scores)
        else:
            stats = macro_f1_stats(predictions, labels)
            results[name] = _corpus_result(name, stats, bootstrap_iters, seed)
    return results


def _mean_result(name: str, scores: list[float]) -> MetricResult:
    return MetricResult(name, float(np.mean(scores)), mean_stderr(scores), scores, [])


def _corpus_result(name: str, stats: list[list[int]], iters: int, seed: int) -> MetricResult:
    value = corpus_from_indices(name, stats, range(len(stats)))
    return MetricResult(name, value, bootstrap_stderr(name, stats, iters, seed), [], stats)


@cache
def _sacrebleu_scorer(metric: str, bleu_tokenize: str | None) -> sacrebleu.BLEU | sacrebleu.CHRF:
    """sacrebleu's metric with default settings; the tokenizer does not matter for stats."""
    if metric == BLEU:
        return sacrebleu.BLEU(tokenize=bleu_tokenize)
    if metric == CHRF:
        return sacrebleu.CHRF()
    raise UserError(f"no sufficient statistics for metric {metric!r}; known: bleu, chrf, macro_f1")


def _bleu_tokenizer(references: Sequence[Sequence[str]], chosen: str | None) -> str:
    """The caller's tokenizer, else "zh" when any reference holds CJK, else sacrebleu's 13a."""
    if chosen is not None:
        if chosen not in sacrebleu.BLEU.TOKENIZERS:
            known = ", ".join(sacrebleu.BLEU.TOKENIZERS)
            raise UserError(f"unknown BLEU tokenizer {chosen!r}; known: {known}")
        return chosen
    if any(has_cjk(ref) for refs in references for ref in refs):
        return "zh"
    return sacrebleu.BLEU.TOKENIZER_DEFAULT


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot, None where an example has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def _reference_lists(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """Every example's references as a non-empty list."""
    _check_lengths(predictions, references)
    refs = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if any(not example_refs for example_refs in refs):
        raise UserError("every example needs at least one reference; one has none")
    return refs


def _check_lengths(predictions: Sequence[object], references: Sequence[object]) -> None:
    if not predictions:
        raise UserError("nothing to score: there are no predictions")
    if len(predictions) != len(references):
        raise UserError(
            f"{len(predictions)} predictions but {len(references)} references; "
            "each example needs one of each"
        )


def _check_metrics(names: Sequence[str], known: Sequence[str], kind: str) -> None:
    for name in names:
        if name not in known:
            raise UserError(f"unknown {kind} metric {name!r}; known: {', '.join(known)}")

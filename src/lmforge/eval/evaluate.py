"""Score one task on one model: requests by the task's output type, lm-eval's metrics, and
every example's inputs, outputs and scores kept for paired comparison.

Metrics, by output type (lm-eval's names and definitions):
  multiple_choice        acc, acc_norm (log-likelihood / choice characters), acc_bytes,
                         exact_match (the gold choice is the greedy continuation), macro_f1
  generate_until         exact_match (lm-eval's options), bleu, chrf, rouge1, rouge2, rougeL
  loglikelihood_rolling  word_perplexity, byte_perplexity, bits_per_byte (lower is better)
Mean metrics keep each example's score; corpus metrics (bleu, chrf, macro_f1, the
perplexities) keep each example's sufficient statistics, so `corpus_value` can recompute
them on any resample of examples.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.errors import UserError
from lmforge.eval import metrics as text_metrics
from lmforge.eval.loglik import encode_pair
from lmforge.eval.runner import Evaluator
from lmforge.eval.tasks import MULTIPLE_CHOICE, ROLLING, Task

MC_METRICS = ("acc", "acc_norm", "acc_bytes", "exact_match", "macro_f1")
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
LOWER_IS_BETTER = set(ROLLING_METRICS)
EXACT_MATCH_KEYS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")


@dataclass
class EvalOptions:
    """How tasks are run; none of these change a score except num_fewshot and the chat flag."""

    num_fewshot: int | None = None  # None: each task's own num_fewshot
    fewshot_seed: int = 1234  # lm-eval's default
    limit: int | None = None  # the first N docs of each task
    apply_chat_template: bool = False
    bootstrap_iters: int = 1000
    seed: int = 1234


@dataclass
class MetricValue:
    value: float
    stderr: float
    lower_is_better: bool = False
    scores: list[float] = field(default_factory=list)  # mean metrics, per example
    stats: list[list[float]] = field(default_factory=list)  # corpus metrics, per example


@dataclass
class TaskResult:
    name: str
    output_type: str
    n: int
    num_fewshot: int
    metrics: dict[str, MetricValue]
    samples: list[dict[str, Any]]


def corpus_value(metric: str, stats: np.ndarray) -> float:
    """A corpus metric from the rows of sufficient statistics it was given."""
    if metric in ROLLING_METRICS:
        ll, words, nbytes = stats[:, 0].sum(), stats[:, 1].sum(), stats[:, 2].sum()
        if metric == "word_perplexity":
            return math.exp(-ll / words)
        return math.exp(-ll / nbytes) if metric == "byte_perplexity" else -ll / nbytes / math.log(2)
    return text_metrics.corpus_from_indices(metric, stats.astype(np.int64), np.arange(len(stats)))


def _corpus_metric(name: str, stats: list[list[float]], opts: EvalOptions) -> MetricValue:
    table = np.asarray(stats, dtype=np.float64)
    value = corpus_value(name, table)
    stderr = math.nan
    if opts.bootstrap_iters >= 2 and len(table) > 1:
        rng = np.random.default_rng(opts.seed)
        draws = [corpus_value(name, table[rng.integers(0, len(table), len(table))])
                 for _ in range(opts.bootstrap_iters)]
        stderr = float(np.std(draws, ddof=1))
    return MetricValue(value, stderr, name in LOWER_IS_BETTER, stats=stats)


def _mean_metric(scores: list[float]) -> MetricValue:
    return MetricValue(float(np.mean(scores)), text_metrics.mean_stderr(scores), scores=scores)


def run_task(task: Task, ev: Evaluator, opts: EvalOptions) -> TaskResult:
    docs = task.docs[:opts.limit] if opts.limit else task.docs
    shots = opts.num_fewshot if opts.num_fewshot is not None else int(
        task.config.get("num_fewshot", 0) or 0)
    rnd = random.Random(opts.fewshot_seed)
    if task.output_type == ROLLING:
        metrics, samples = _rolling(task, docs, ev, opts)
    else:
        contexts = [_prompt(task.context(d, shots, rnd), ev, opts) for d in docs]
        run = _multiple_choice if task.output_type == MULTIPLE_CHOICE else _generate
        metrics, samples = run(task, docs, contexts, ev, opts)
    return TaskResult(task.name, task.output_type, len(docs), shots, metrics, samples)


def _prompt(context: str, ev: Evaluator, opts: EvalOptions) -> str:
    """With the chat flag, the context is one user turn and the assistant's turn opens."""
    if not opts.apply_chat_template:
        return context
    if not ev.tok.chat_template:
        raise UserError(f"{ev.tok.directory} has no chat template; drop --apply-chat-template")
    return ev.tok.render([{"role": "user", "content": context}], add_generation_prompt=True)


def _check(task: Task, known: tuple[str, ...]) -> None:
    unknown = [m for m in task.metric_names if m not in known]
    if unknown:
        raise UserError(f"{task.path}: metric {unknown[0]!r} is not scored for "
                        f"{task.output_type} tasks; use {', '.join(known)}")


def _multiple_choice(task: Task, docs: list[dict], contexts: list[str], ev: Evaluator,
                     opts: EvalOptions) -> tuple[dict[str, MetricValue], list[dict]]:
    _check(task, MC_METRICS)
    sep = "" if opts.apply_chat_template else task.config.get("target_delimiter", " ")
    choices = [task.choices(d) for d in docs]
    golds = [task.gold_index(d, c) for d, c in zip(docs, choices, strict=True)]
    pairs = [encode_pair(ev.encode, ctx, sep + choice, ev.prefix_id)
             for ctx, cs in zip(contexts, choices, strict=True) for choice in cs]
    results = iter(ev.loglikelihood(pairs, task.name))
    samples, per_metric = [], {m: [] for m in task.metric_names if m != "macro_f1"}
    preds = []
    for i, (doc, cs, gold) in enumerate(zip(docs, choices, golds, strict=True)):
        lls, greedy = zip(*[next(results) for _ in cs], strict=True)
        ll = np.array(lls)
        pred = int(np.argmax(ll))
        picks = {"acc": pred, "acc_norm": int(np.argmax(ll / [len(c) for c in cs])),
                 "acc_bytes": int(np.argmax(ll / [len(c.encode("utf-8")) for c in cs]))}
        golds_i = gold if isinstance(gold, list) else [gold]
        scores = {m: float(picks[m] in golds_i) for m in picks if m in per_metric}
        if "exact_match" in per_metric:
            scores["exact_match"] = float(any(greedy[g] for g in golds_i))
        for m, s in scores.items():
            per_metric[m].append(s)
        preds.append(pred)
        samples.append({"doc_id": i, "doc": doc, "context": contexts[i], "choices": cs,
                        "target": gold, "loglikelihoods": list(lls), "greedy": list(greedy),
                        "pred": pred, "scores": scores})
    out = {m: _mean_metric(s) for m, s in per_metric.items()}
    if "macro_f1" in task.metric_names:
        labels = [g[0] if isinstance(g, list) else g for g in golds]
        stats = text_metrics.macro_f1_stats(preds, labels)
        out["macro_f1"] = _corpus_metric("macro_f1", stats, opts)
        for sample, row in zip(samples, stats, strict=True):
            sample["stats"] = {"macro_f1": row}
    return out, samples


def _generate(task: Task, docs: list[dict], contexts: list[str], ev: Evaluator,
              opts: EvalOptions) -> tuple[dict[str, MetricValue], list[dict]]:
    _check(task, text_metrics.GENERATION_METRICS)
    predictions = ev.generate(contexts, task.until, task.max_gen_toks, task.name)
    references = [_references(task.target(d)) for d in docs]
    options = _exact_match_options(task)
    scored = text_metrics.score_generation(
        predictions, references, task.metric_names, exact_match_options=options,
        bootstrap_iters=opts.bootstrap_iters, seed=opts.seed)
    out: dict[str, MetricValue] = {}
    for name, result in scored.items():
        if result.stats:
            out[name] = MetricValue(result.value, result.stderr, stats=result.stats)
        else:
            out[name] = MetricValue(result.value, result.stderr, scores=result.per_example)
    samples = []
    for i, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        samples.append({
            "doc_id": i, "doc": doc, "context": contexts[i], "target": references[i],
            "prediction": prediction,
            "scores": {n: r.per_example[i] for n, r in scored.items() if r.per_example},
            "stats": {n: r.stats[i] for n, r in scored.items() if r.stats}})
    return out, samples


def _references(target: Any) -> list[str]:
    return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def _exact_match_options(task: Task) -> text_metrics.ExactMatchOptions:
    entry = next((m for m in task.metrics if m["metric"] == "exact_match"), {})
    kwargs = {k: entry[k] for k in EXACT_MATCH_KEYS if k in entry}
    if "regexes_to_ignore" in kwargs:
        kwargs["regexes_to_ignore"] = tuple(kwargs["regexes_to_ignore"])
    return text_metrics.ExactMatchOptions(**kwargs)


def _rolling(task: Task, docs: list[dict], ev: Evaluator, opts: EvalOptions
             ) -> tuple[dict[str, MetricValue], list[dict]]:
    _check(task, ROLLING_METRICS)
    texts = [str(task.target(d)) for d in docs]
    lls = ev.rolling(texts, task.name)
    stats = [[ll, len(re.split(r"\s+", t)), len(t.encode("utf-8"))]
             for ll, t in zip(lls, texts, strict=True)]
    out = {m: _corpus_metric(m, stats, opts) for m in task.metric_names}
    samples = [{"doc_id": i, "text": t[:200], "loglikelihood": row[0], "words": row[1],
                "bytes": row[2], "stats": {m: row for m in task.metric_names}}
               for i, (t, row) in enumerate(zip(texts, stats, strict=True))]
    return out, samples

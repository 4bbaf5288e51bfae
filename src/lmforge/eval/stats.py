"""Statistics for deciding whether model B should replace model A.

`lmforge compare A B` scores both models on the same eval examples, so every example gives
a paired difference. Pairing cancels the example-to-example spread (easy vs hard questions),
which makes the comparison far more sensitive than comparing two independent means.

- `paired_bootstrap`: difference, CI and p-value for any metric, resampling examples.
- `mcnemar`: the classic test for paired right/wrong outcomes (accuracy, exact match).
- `unpaired_bootstrap`, `fisher`: the same questions for live A/B traffic, where each side
  answered different requests (`Metric(paired=False)`).
- `decide`: B replaces A only if B is better on every chosen metric.
- `too_small`: a one-line warning when n is too small to see the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from lmforge.errors import UserError

# A metric computed from rows of a score array: np.mean, or corpus BLEU from summed n-gram counts.
Statistic = Callable[[np.ndarray], float]
# A metric computed on the examples at the given indices, for data that is not one array.
IndexMetric = Callable[[np.ndarray], float]

MIN_EXAMPLES = 30  # below this, bootstrap CIs are too rough to base a replacement on
EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant pairs
POWER = 0.8  # the usual power for a minimum detectable effect
_CHUNK = 4_000_000  # indices per resampling chunk (32 MB), so memory stays flat for any n


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of statistic(B) - statistic(A) over resampled examples."""

    diff: float  # observed statistic(B) - statistic(A) on all examples
    low: float  # percentile CI of the difference at `confidence`
    high: float
    p_value: float  # two-sided bootstrap p-value of "no difference" (see paired_bootstrap)
    stderr: float  # std of the resampled differences: the bootstrap standard error
    n: int
    iters: int
    confidence: float


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired right/wrong outcomes; only discordant pairs carry information."""

    b01: int  # A wrong, B right
    b10: int  # A right, B wrong
    statistic: float  # exact: min(b01, b10); chi2: the continuity-corrected chi-square
    p_value: float
    method: Literal["exact", "chi2"]


@dataclass(frozen=True, eq=False)
class Metric:
    """One metric to decide on: A's and B's scores on the same examples, in the same order."""

    name: str
    a: ArrayLike  # per-example scores, or per-example sufficient statistics (n, k)
    b: ArrayLike
    lower_is_better: bool = False  # perplexity, latency, error rate
    statistic: Statistic | None = None  # None: the mean of per-example scores
    paired: bool = True  # False: live A/B traffic, different requests on each side


@dataclass(frozen=True)
class MetricVerdict:
    """Whether B is better than A on one metric, and why, in words."""

    name: str
    better: bool
    reason: str  # e.g. "+0.042, 95% CI [0.012, 0.071], McNemar p=0.006"
    bootstrap: Bootstrap
    mcnemar: McNemar | None  # only for paired 0/1 per-example scores
    warning: str | None  # from too_small
    fisher_p: float | None = None  # only for unpaired 0/1 outcomes (e.g. error rates)


@dataclass(frozen=True)
class Verdict:
    """The replacement decision: one line for people, and the per-metric reasons behind it."""

    replace: bool
    summary: str  # e.g. "keep A: not better on rouge1 (+0.01, 95% CI [-0.01, 0.03] includes 0)"
    metrics: tuple[MetricVerdict, ...]
    warnings: tuple[str, ...]  # "metric: n=12 examples is too few to decide: ..."


def _scores(x: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 0 or len(arr) == 0:
        raise UserError(f"{what} has no examples: score at least one example")
    if not np.isfinite(arr).all():
        raise UserError(f"{what} has NaN or infinite scores: fix or drop those examples")
    return arr


def _paired(a: ArrayLike, b: ArrayLike, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _scores(a, f"A's {what}"), _scores(b, f"B's {what}")
    if len(a_arr) != len(b_arr):
        raise UserError(
            f"A's and B's {what} have different lengths ({len(a_arr)} vs {len(b_arr)}): "
            "score both models on the same examples, in the same order"
        )
    return a_arr, b_arr


def _check(confidence: float, iters: int) -> None:
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be between 0 and 1, got {confidence}: use e.g. 0.95")
    if iters < 1:
        raise UserError(f"iters must be at least 1, got {iters}: use e.g. 10000")


def _is_binary(x: np.ndarray) -> bool:
    return x.ndim == 1 and bool(np.isin(x, (0.0, 1.0)).all())


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def mean_stderr(values: ArrayLike) -> float:
    """Standard error of the mean, std(ddof=1) / sqrt(n), as lm-eval reports it; nan for n=1."""
    arr = _scores(values, "values")
    if len(arr) < 2:
        return float("nan")  # one example says nothing about the spread
    return float(np.std(arr, ddof=1) / np.sqrt(len(arr)))


def _resamples(n: int, iters: int, seed: int) -> Iterator[np.ndarray]:
    """Index matrices (rows, n), `iters` rows in all; every path draws this same stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    for start in range(0, iters, rows):
        yield rng.integers(0, n, size=(min(rows, iters - start), n))


def _summarise(observed: float, diffs: np.ndarray, n: int, confidence: float) -> Bootstrap:
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    if observed > 0:
        p_value = min(1.0, 2 * float(np.mean(diffs <= 0)))
    elif observed < 0:
        p_value = min(1.0, 2 * float(np.mean(diffs >= 0)))
    else:
        p_value = 1.0
    return Bootstrap(
        diff=observed,
        low=float(low),
        high=float(high),
        p_value=p_value,
        stderr=float(np.std(diffs)),
        n=n,
        iters=len(diffs),
        confidence=confidence,
    )


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Statistic | None = None,
    *,
    iters: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Bootstrap:
    """Bootstrap statistic(B) - statistic(A), resampling the same example indices for both.

    `a` and `b` hold one row per example. With `statistic=None` the metric is the mean of
    per-example scores, computed vectorised (10k iters over 10k examples take about a second).
    Otherwise `statistic(rows)` gets the resampled rows, e.g. per-example n-gram counts (n, k)
    from which it computes corpus BLEU.

    p_value: the fraction of resampled differences on the other side of 0 from the observed
    difference (a resample at exactly 0 counts as the other side), times 2 for both sides,
    clipped to 1; it is 1 when the observed difference is 0. A p of 0 means p < 1/iters.
    """
    a_arr, b_arr = _paired(a, b)
    if statistic is not None:
        return paired_bootstrap_indexed(
            lambda idx: statistic(a_arr[idx]),
            lambda idx: statistic(b_arr[idx]),
            len(a_arr),
            iters=iters,
            seed=seed,
            confidence=confidence,
        )
    if a_arr.ndim != 1:
        raise UserError(
            f"scores have shape {a_arr.shape}, not one number per example: "
            "pass statistic= to turn per-example rows into the metric"
        )
    _check(confidence, iters)
    d = b_arr - a_arr  # mean(b[idx]) - mean(a[idx]) == mean(d[idx])
    diffs = np.concatenate([d[idx].mean(axis=1) for idx in _resamples(len(d), iters, seed)])
    return _summarise(float(b_arr.mean() - a_arr.mean()), diffs, len(d), confidence)


def paired_bootstrap_indexed(
    metric_a: IndexMetric,
    metric_b: IndexMetric,
    n: int,
    *,
    iters: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Bootstrap:
    """Like paired_bootstrap, but each metric is recomputed from the resampled example indices.

    For corpus-level metrics whose per-example data is not one array (e.g. hypothesis and
    reference strings): metric_a(idx) is A's metric on examples idx. Same seed, same
    resamples as paired_bootstrap, so both agree for the mean.
    """
    if n < 1:
        raise UserError(f"n={n}: there are no examples to compare; score at least one example")
    _check(confidence, iters)
    diffs = np.array(
        [metric_b(idx) - metric_a(idx) for chunk in _resamples(n, iters, seed) for idx in chunk]
    )
    every = np.arange(n)
    return _summarise(float(metric_b(every) - metric_a(every)), diffs, n, confidence)


def unpaired_bootstrap(a: ArrayLike, b: ArrayLike, *, iters: int = 10_000, seed: int = 0,
                       confidence: float = 0.95) -> Bootstrap:
    """Bootstrap mean(B) - mean(A) for two independent samples (each resampled on its own);
    n in the result is the smaller side."""
    a_arr, b_arr = _scores(a, "A's scores"), _scores(b, "B's scores")
    _check(confidence, iters)
    rng = np.random.default_rng(seed)
    diffs = np.empty(iters)
    for start in range(0, iters, 1000):
        k = min(1000, iters - start)
        diffs[start:start + k] = (b_arr[rng.integers(0, len(b_arr), (k, len(b_arr)))].mean(1)
                                  - a_arr[rng.integers(0, len(a_arr), (k, len(a_arr)))].mean(1))
    observed = float(b_arr.mean() - a_arr.mean())
    return _summarise(observed, diffs, min(len(a_arr), len(b_arr)), confidence)


def fisher(a_outcomes: ArrayLike, b_outcomes: ArrayLike) -> float:
    """Fisher's exact test that two independent 0/1 samples have the same rate (two-sided)."""
    a, b = _scores(a_outcomes, "A's outcomes"), _scores(b_outcomes, "B's outcomes")
    table = [[int(a.sum()), int(len(a) - a.sum())], [int(b.sum()), int(len(b) - b.sum())]]
    return float(sps.fisher_exact(table).pvalue)


def mcnemar(a_correct: ArrayLike, b_correct: ArrayLike) -> McNemar:
    """McNemar's test that A and B are equally accurate on the same examples.

    Exact two-sided binomial test on the discordant pairs when there are fewer than 25,
    else chi-square with continuity correction, 1 dof. No discordant pairs: p = 1.
    """
    a, b = _paired(a_correct, b_correct, "right/wrong outcomes")
    if not (_is_binary(a) and _is_binary(b)):
        raise UserError(
            "McNemar needs one right/wrong (0/1) outcome per example: "
            "pass accuracy-type per-example scores, not averages"
        )
    b01 = int(np.sum((a == 0) & (b == 1)))
    b10 = int(np.sum((a == 1) & (b == 0)))
    discordant = b01 + b10
    if discordant == 0:
        return McNemar(0, 0, 0.0, 1.0, "exact")
    if discordant < EXACT_BELOW:
        p_value = sps.binomtest(b01, discordant, 0.5).pvalue
        return McNemar(b01, b10, float(min(b01, b10)), float(p_value), "exact")
    chi2 = max(abs(b01 - b10) - 1, 0) ** 2 / discordant  # the correction never flips the sign
    return McNemar(b01, b10, chi2, float(sps.chi2.sf(chi2, df=1)), "chi2")


def min_detectable_effect(stderr: float, confidence: float = 0.95, power: float = POWER) -> float:
    """Smallest true difference a two-sided test at `confidence` detects with `power`.

    The normal approximation (z_{1-alpha/2} + z_power) * stderr: 2.8 stderr at 95% and 80%.
    """
    z = sps.norm.ppf(1 - (1 - confidence) / 2) + sps.norm.ppf(power)
    return float(z * stderr)


def too_small(
    n: int, diff: float, stderr: float, confidence: float = 0.95, power: float = POWER
) -> str | None:
    """A one-line warning when n examples cannot settle the question, else None.

    Warns when n < 30 (bootstrap CIs are too rough there) or when the observed |diff| is
    below the minimum detectable effect for this stderr: a real difference that small would
    usually go unseen, so "not better" is not evidence of "no difference".
    """
    mde = min_detectable_effect(stderr, confidence, power)
    if n >= MIN_EXAMPLES and abs(diff) >= mde:
        return None
    return (
        f"n={n} examples is too few to decide: the smallest difference detectable at "
        f"{_pct(confidence)} is ±{mde:.2g} (observed {diff:+.2g})"
    )


def _judge(metric: Metric, confidence: float, iters: int, seed: int) -> MetricVerdict:
    """B is better on a metric if the whole CI is on the better side (and McNemar agrees)."""
    if metric.paired:
        a, b = _paired(metric.a, metric.b, f"{metric.name} scores")
        boot = paired_bootstrap(a, b, metric.statistic, iters=iters, seed=seed,
                                confidence=confidence)
    else:
        a, b = _scores(metric.a, f"A's {metric.name}"), _scores(metric.b, f"B's {metric.name}")
        boot = unpaired_bootstrap(a, b, iters=iters, seed=seed, confidence=confidence)
    binary = metric.statistic is None and _is_binary(a) and _is_binary(b)
    test = mcnemar(a, b) if binary and metric.paired else None
    fisher_p = fisher(a, b) if binary and not metric.paired else None
    sign = -1.0 if metric.lower_is_better else 1.0
    low, high = sorted((sign * boot.low, sign * boot.high))  # in "higher is better" terms
    ci = f"{boot.diff:+.3g}, {_pct(confidence)} CI [{boot.low:.3g}, {boot.high:.3g}]"
    better = False
    if high < 0:
        direction = "lower" if metric.lower_is_better else "higher"
        reason = f"{ci} is worse, {direction} is better"
    elif low <= 0:
        reason = f"{ci} includes 0"
    elif test is not None and test.p_value >= 1 - confidence:
        reason = f"{ci}, McNemar p={test.p_value:.2g} is not below {1 - confidence:.2g}"
    elif fisher_p is not None and fisher_p >= 1 - confidence:
        reason = f"{ci}, Fisher p={fisher_p:.2g} is not below {1 - confidence:.2g}"
    else:
        better = True
        reason = ci if test is None else f"{ci}, McNemar p={test.p_value:.2g}"
        reason = reason if fisher_p is None else f"{ci}, Fisher p={fisher_p:.2g}"
    warning = too_small(boot.n, boot.diff, boot.stderr, confidence)
    return MetricVerdict(metric.name, better, reason, boot, test, warning, fisher_p)


def _join(verdicts: Sequence[MetricVerdict]) -> str:
    parts = [f"{v.name} ({v.reason})" for v in verdicts]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def decide(
    metrics: Sequence[Metric],
    confidence: float = 0.95,
    *,
    iters: int = 10_000,
    seed: int = 0,
) -> Verdict:
    """B replaces A only if B is better on EVERY metric with `confidence`.

    Better means the CI of B - A at `confidence` lies entirely on the better side of 0
    (above for higher-is-better, below for lower-is-better), and for 0/1 per-example scores
    also McNemar p < 1 - confidence. Small-n warnings are reported, not enforced.
    """
    if not metrics:
        raise UserError("no metrics to decide on: choose at least one metric, e.g. acc")
    judged = tuple(_judge(m, confidence, iters, seed) for m in metrics)
    replace = all(v.better for v in judged)
    if replace:
        summary = "B replaces A: better on " + _join(judged)
    else:
        summary = "keep A: not better on " + _join([v for v in judged if not v.better])
    warnings = tuple(f"{v.name}: {v.warning}" for v in judged if v.warning)
    return Verdict(replace, summary, judged, warnings)

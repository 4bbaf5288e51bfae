"""Paired comparison statistics against constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lmforge.errors import UserError
from lmforge.eval.stats import (
    Metric,
    decide,
    mcnemar,
    mean_stderr,
    min_detectable_effect,
    paired_bootstrap,
    paired_bootstrap_indexed,
    too_small,
)


def outcomes(b01: int, b10: int, same: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes with exactly b01 (A wrong, B right) and b10 discordant pairs."""
    a = np.array([0] * b01 + [1] * b10 + [1] * same + [0] * same, dtype=float)
    b = np.array([1] * b01 + [0] * b10 + [1] * same + [0] * same, dtype=float)
    return a, b


def clearly_better(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A right 60% of the time; B fixes 150 of A's misses and breaks 50 of its hits."""
    a = (np.random.default_rng(seed).random(n) < 0.6).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:150]] = 1
    b[np.flatnonzero(a == 1)[:50]] = 0
    return a, b


def test_mean_stderr_matches_hand_value() -> None:
    assert mean_stderr([1, 2, 3, 4]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_stderr([1, 2, 3, 4]) == pytest.approx(0.6454972)
    assert np.isnan(mean_stderr([0.7]))


def test_mcnemar_exact_branch() -> None:
    result = mcnemar(*outcomes(8, 2))
    assert (result.b01, result.b10, result.method) == (8, 2, "exact")
    assert result.p_value == pytest.approx(0.109375)
    assert result.p_value == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue)


def test_mcnemar_chi2_branch() -> None:
    result = mcnemar(*outcomes(30, 10))
    assert (result.b01, result.b10, result.method) == (30, 10, "chi2")
    assert result.statistic == pytest.approx(9.025)  # (|30 - 10| - 1)^2 / 40
    assert result.p_value == pytest.approx(sps.chi2.sf(9.025, 1))


def test_mcnemar_switches_to_chi2_at_25_discordant_pairs() -> None:
    assert mcnemar(*outcomes(14, 10)).method == "exact"
    assert mcnemar(*outcomes(15, 10)).method == "chi2"


def test_mcnemar_no_discordant_pairs() -> None:
    result = mcnemar(*outcomes(0, 0))
    assert (result.b01, result.b10, result.p_value) == (0, 0, 1.0)


def test_mcnemar_rejects_non_binary() -> None:
    with pytest.raises(UserError, match="0/1"):
        mcnemar([0, 1, 0.5], [1, 1, 0])


def test_identical_models_no_difference() -> None:
    a = np.random.default_rng(0).random(500)
    boot = paired_bootstrap(a, a.copy(), iters=2000)
    assert (boot.diff, boot.low, boot.high, boot.p_value) == (0.0, 0.0, 0.0, 1.0)
    verdict = decide([Metric("score", a, a.copy())], iters=2000)
    assert not verdict.replace
    assert verdict.summary.startswith("keep A: not better on score")
    assert "includes 0" in verdict.summary


def test_constant_improvement_gives_point_ci_and_replace() -> None:
    a = np.random.default_rng(0).random(300)
    boot = paired_bootstrap(a, a + 0.1, iters=2000)
    assert boot.diff == pytest.approx(0.1, abs=1e-12)
    assert boot.low == pytest.approx(0.1, abs=1e-12)
    assert boot.high == pytest.approx(0.1, abs=1e-12)
    assert boot.p_value == 0.0
    verdict = decide([Metric("score", a, a + 0.1)], iters=2000)
    assert verdict.replace
    assert verdict.summary.startswith("B replaces A: better on score (+0.1, 95% CI [0.1, 0.1])")


def test_clearly_better_b_replaces_a() -> None:
    a, b = clearly_better()
    verdict = decide([Metric("acc", a, b)])
    assert verdict.replace, verdict.summary
    acc = verdict.metrics[0]
    assert acc.bootstrap.diff == pytest.approx(100 / 2000)
    assert acc.bootstrap.low > 0
    assert acc.mcnemar is not None
    assert acc.mcnemar.p_value < 0.05
    assert "McNemar p=" in verdict.summary
    assert verdict.warnings == ()


def test_better_on_one_metric_worse_on_another_keeps_a() -> None:
    a, b = clearly_better()
    rng = np.random.default_rng(1)
    latency_a = 100 + rng.normal(0, 5, len(a))
    latency_b = latency_a + 10 + rng.normal(0, 5, len(a))  # B is 10 ms slower
    verdict = decide(
        [Metric("acc", a, b), Metric("latency", latency_a, latency_b, lower_is_better=True)]
    )
    assert not verdict.replace
    assert verdict.summary.startswith("keep A: not better on latency (")
    assert "acc" not in verdict.summary
    assert [(m.name, m.better) for m in verdict.metrics] == [("acc", True), ("latency", False)]
    assert "is worse, lower is better" in verdict.metrics[1].reason


def test_lower_is_better_direction() -> None:
    rng = np.random.default_rng(2)
    perplexity_a = 20 + rng.normal(0, 1, 1000)
    perplexity_b = perplexity_a - 1 + rng.normal(0, 0.5, 1000)  # B's perplexity is lower
    lower = Metric("perplexity", perplexity_a, perplexity_b, lower_is_better=True)
    higher = Metric("perplexity", perplexity_a, perplexity_b)
    assert decide([lower], iters=2000).replace
    assert not decide([higher], iters=2000).replace


def test_mcnemar_can_veto_a_bootstrap_win() -> None:
    a, b = outcomes(6, 0, same=200)  # 6 fixes, no regressions: exact p = 2 / 64 = 0.03125
    assert paired_bootstrap(a, b, iters=4000).low > 0
    assert decide([Metric("acc", a, b)], confidence=0.95, iters=4000).replace
    verdict = decide([Metric("acc", a, b)], confidence=0.99, iters=4000)
    assert not verdict.replace
    assert "McNemar p=0.031 is not below 0.01" in verdict.summary


def test_bootstrap_is_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(400), rng.random(400)
    assert paired_bootstrap(a, b, seed=7, iters=1000) == paired_bootstrap(a, b, seed=7, iters=1000)
    assert paired_bootstrap(a, b, seed=7, iters=1000) != paired_bootstrap(a, b, seed=8, iters=1000)


def test_ci_width_matches_normal_theory() -> None:
    rng = np.random.default_rng(4)
    n, sd = 2000, 1.0
    a = rng.normal(0, 1, n)
    b = a + rng.normal(0.2, sd, n)
    boot = paired_bootstrap(a, b, iters=4000)
    expected = 2 * 1.96 * np.std(b - a, ddof=1) / np.sqrt(n)
    assert boot.high - boot.low == pytest.approx(expected, rel=0.15)
    assert boot.stderr == pytest.approx(mean_stderr(b - a), rel=0.1)


def test_p_value_matches_normal_theory() -> None:
    rng = np.random.default_rng(8)
    noise = rng.normal(0, 1, 1000)
    a = rng.normal(0, 1, 1000)
    b = a + 0.065 + (noise - noise.mean()) / noise.std()  # 2 standard errors: p near 0.04
    boot = paired_bootstrap(a, b)
    expected = 2 * sps.norm.sf(boot.diff / boot.stderr)
    assert 0.01 < expected < 0.1
    assert boot.p_value == pytest.approx(expected, rel=0.25)


def test_ci_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(200):
        d = rng.normal(0.3, 1.0, 100)
        boot = paired_bootstrap(np.zeros(100), d, iters=1000, seed=trial)
        covered += boot.low <= 0.3 <= boot.high
    assert 0.88 <= covered / 200 <= 0.99


def test_index_statistic_matches_array_path_for_the_mean() -> None:
    a, b = clearly_better(500)
    by_array = paired_bootstrap(a, b, iters=3000, seed=11)
    by_index = paired_bootstrap_indexed(
        lambda idx: a[idx].mean(), lambda idx: b[idx].mean(), len(a), iters=3000, seed=11
    )
    by_statistic = paired_bootstrap(a, b, np.mean, iters=3000, seed=11)
    for other in (by_index, by_statistic):
        assert other.diff == pytest.approx(by_array.diff)
        assert other.low == pytest.approx(by_array.low)
        assert other.high == pytest.approx(by_array.high)
        assert other.p_value == by_array.p_value
        assert (other.n, other.iters) == (500, 3000)


def test_corpus_statistic_is_recomputed_from_resampled_rows() -> None:
    """A corpus metric (ratio of sums, like BLEU's precisions) from per-example counts."""
    rng = np.random.default_rng(6)
    totals = rng.integers(5, 30, 300)
    a = np.stack([rng.binomial(totals, 0.5), totals], axis=1)
    b = np.stack([rng.binomial(totals, 0.6), totals], axis=1)

    def precision(rows: np.ndarray) -> float:
        return rows[:, 0].sum() / rows[:, 1].sum()

    boot = paired_bootstrap(a, b, precision, iters=1000)
    assert boot.diff == pytest.approx(precision(b) - precision(a))
    assert boot.low > 0
    by_index = paired_bootstrap_indexed(
        lambda idx: precision(a[idx]), lambda idx: precision(b[idx]), len(a), iters=1000
    )
    assert by_index == boot


def test_small_n_warning() -> None:
    rng = np.random.default_rng(7)
    small = rng.normal(0, 1, 10)
    verdict = decide([Metric("score", small, small + rng.normal(0.5, 1, 10))], iters=1000)
    assert len(verdict.warnings) == 1
    assert verdict.warnings[0].startswith("score: n=10 examples is too few to decide: ")
    assert "detectable at 95% is ±" in verdict.warnings[0]

    big = rng.normal(0, 1, 5000)
    verdict = decide([Metric("score", big, big + rng.normal(0.5, 1, 5000))], iters=1000)
    assert verdict.replace
    assert verdict.warnings == ()


def test_too_small_uses_the_minimum_detectable_effect() -> None:
    assert min_detectable_effect(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1)
    assert too_small(1000, diff=0.5, stderr=0.1) is None
    assert too_small(1000, diff=0.2, stderr=0.1) == (
        "n=1000 examples is too few to decide: "
        "the smallest difference detectable at 95% is ±0.28 (observed +0.2)"
    )
    assert too_small(29, diff=5.0, stderr=0.1) is not None


def test_input_errors_name_the_problem() -> None:
    with pytest.raises(UserError, match=r"different lengths \(3 vs 2\).*same examples"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(UserError, match="no examples"):
        paired_bootstrap([], [])
    with pytest.raises(UserError, match="NaN"):
        mcnemar([0, np.nan], [1, 0])
    with pytest.raises(UserError, match="different lengths"):
        decide([Metric("acc", [1, 0, 1], [1, 0])])
    with pytest.raises(UserError, match="no metrics"):
        decide([])
    with pytest.raises(UserError, match="confidence"):
        paired_bootstrap([1, 2], [2, 3], confidence=95)
    with pytest.raises(UserError, match="no examples"):
        mean_stderr([])

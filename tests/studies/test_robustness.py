"""The robustness summary on small hand-made studies whose answers are known."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from pydantic import BaseModel
from scipy import stats

from studies.robustness import (
    Comparison,
    LRDifference,
    LRStats,
    PairDifference,
    RobustnessSummary,
    SeedSpread,
    SeedValue,
    TrialOutcome,
    VariantSummary,
    expected_max,
    summarize,
    wilson_interval,
)
from studies.robustness._paired import rank_scores, wilcoxon_signed_rank

P_DETACH = {"vanilla": 0.0, "h-detach": 0.5, "h-detach-25": 0.25}


def trial(variant: str = "vanilla", lr: float = 1e-3, seed: int = 0, metric: float | None = 0.9, **kw):
    """A done trial unless told otherwise."""
    return TrialOutcome(
        variant=variant, p_detach=P_DETACH[variant], lr=lr, seed=seed, state=kw.pop("state", "done"),
        metric=metric, **kw,
    )  # fmt: skip


def grid(variant: str, metrics_by_lr: Mapping[float, Sequence[float | None]], **kw) -> list[TrialOutcome]:
    """Done trials, seeds 0.. in list order at each lr."""
    return [
        trial(variant, lr, seed, metric, **kw)
        for lr, metrics in metrics_by_lr.items()
        for seed, metric in enumerate(metrics)
    ]


def rates_grid(rates: dict[float, tuple[int, int]]) -> list[TrialOutcome]:
    """At each lr, `k` successes (metric 1.0) out of `n` runs (the rest 0.0), threshold 0.5."""
    return grid("vanilla", {lr: [1.0] * k + [0.0] * (n - k) for lr, (k, n) in rates.items()})


def acc(outcomes, **kw) -> RobustnessSummary:
    return summarize(outcomes, "accuracy", kw.pop("threshold", 0.85), True, **kw)


# --- per learning rate ---------------------------------------------------------------------------


def test_lr_stats_match_hand_computed_values():
    steps = [100, 50, None, 300]  # seed 1 misses the threshold: its steps must not count
    outcomes = [
        trial(lr=0.01, seed=s, metric=m, steps_to_threshold=st)
        for s, (m, st) in enumerate(zip([0.9, 0.7, 0.8, 0.95], steps, strict=True))
    ]
    (row,) = acc(outcomes).variants[0].lrs
    assert (row.lr, row.seeds_run, row.failed, row.diverged, row.n_values) == (0.01, 4, 0, 0, 4)
    assert row.successes == 2 and row.success_rate == 0.5
    assert row.mean == pytest.approx(0.8375, abs=1e-12)
    assert row.median == pytest.approx(0.85, abs=1e-12)
    assert row.std == pytest.approx(math.sqrt(0.036875 / 3), abs=1e-12)  # squared deviations sum to 0.036875
    assert (row.worst, row.min, row.max) == (0.7, 0.7, 0.95)
    assert row.median_steps_to_threshold == 200.0


@pytest.mark.parametrize("metric, higher_is_better", [("accuracy", True), ("mse", False)])
def test_a_run_exactly_at_the_threshold_is_a_success_either_way(metric, higher_is_better):
    """The success rule is "at least as good as the threshold", as the trainer's (SuccessRule.meets)."""
    at, worse = 0.5, 0.4 if higher_is_better else 0.6
    (row,) = summarize(grid("vanilla", {0.01: [at, worse]}), metric, 0.5, higher_is_better).variants[0].lrs
    assert (row.successes, row.success_rate) == (1, 0.5)


def test_lrs_are_sorted_and_std_needs_two_values():
    summary = acc(grid("vanilla", {1e-2: [0.9], 1e-4: [0.9, 0.8], 1e-3: [0.7, 0.9]}))
    rows = summary.variants[0].lrs
    assert [r.lr for r in rows] == [1e-4, 1e-3, 1e-2]
    assert rows[2].std is None and rows[2].median_steps_to_threshold is None
    assert rows[0].std == pytest.approx(np.std([0.9, 0.8], ddof=1), abs=1e-12)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 5), (3, 5), (5, 5), (1, 20), (17, 20), (50, 100)])
def test_wilson_interval_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_success_interval_is_wilson_of_the_lr_counts():
    (row,) = acc(rates_grid({1e-3: (3, 7)}), threshold=0.5).variants[0].lrs
    low, high = wilson_interval(3, 7)
    assert (row.success_ci_low, row.success_ci_high) == (low, high)
    assert row.success_rate == 3 / 7 and low < 3 / 7 < high


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


# --- across learning rates -----------------------------------------------------------------------


def test_robust_range_covers_lrs_at_or_above_the_level():
    summary = acc(rates_grid({1e-4: (2, 5), 1e-3: (5, 5), 1e-2: (4, 5), 1e-1: (0, 5)}), threshold=0.5)
    v = summary.variants[0]
    assert v.robust_lrs == [1e-3, 1e-2]  # 4/5 = 0.8 meets the default level exactly
    assert (v.robust_lr_low, v.robust_lr_high) == (1e-3, 1e-2)
    assert v.robust_width_decades == pytest.approx(1.0, abs=1e-12)
    assert v.robust_contiguous


def test_robust_range_with_a_gap_is_not_contiguous():
    v = acc(rates_grid({1e-4: (5, 5), 1e-3: (1, 5), 1e-2: (5, 5)}), threshold=0.5).variants[0]
    assert v.robust_lrs == [1e-4, 1e-2]
    assert v.robust_width_decades == pytest.approx(2.0, abs=1e-12)
    assert not v.robust_contiguous


def test_robust_range_of_one_lr_or_none():
    one = acc(rates_grid({1e-4: (1, 5), 1e-3: (5, 5)}), threshold=0.5).variants[0]
    assert (one.robust_lrs, one.robust_width_decades, one.robust_contiguous) == ([1e-3], 0.0, True)
    none = acc(rates_grid({1e-4: (1, 5), 1e-3: (3, 5)}), threshold=0.5).variants[0]
    assert none.robust_lrs == [] and none.robust_lr_low is None and none.robust_lr_high is None
    assert none.robust_width_decades is None and not none.robust_contiguous
    lenient = acc(rates_grid({1e-4: (1, 5), 1e-3: (3, 5)}), threshold=0.5, robust_level=0.6).variants[0]
    assert lenient.robust_lrs == [1e-3]


def test_success_auc_is_the_normalised_trapezoid_over_log10_lr():
    # log10 lr = -4, -3, -1; rates 0, 1, 0.5: (1 * 0.5 + 2 * 0.75) / 3
    v = acc(rates_grid({1e-4: (0, 2), 1e-3: (2, 2), 1e-1: (1, 2)}), threshold=0.5).variants[0]
    assert v.success_auc == pytest.approx(2 / 3, abs=1e-12)
    single = acc(rates_grid({1e-3: (3, 4)}), threshold=0.5).variants[0]
    assert single.success_auc == 0.75


def test_best_lr_worst_seed_and_spread():
    v = acc(grid("vanilla", {1e-4: [0.5, 0.6], 1e-3: [0.92, 0.80, 0.86], 1e-2: [0.7, 0.75]})).variants[0]
    assert v.best_lr == 1e-3 and v.best_mean == pytest.approx(0.86, abs=1e-12)
    assert v.worst_seed_at_best_lr == SeedValue(seed=1, value=0.80)
    assert v.seed_spread_at_best_lr is not None
    assert v.seed_spread_at_best_lr.max_minus_min == pytest.approx(0.12, abs=1e-12)
    assert v.seed_spread_at_best_lr.std == pytest.approx(np.std([0.92, 0.80, 0.86], ddof=1), abs=1e-12)


def test_best_lr_tie_goes_to_the_smaller_lr():
    v = acc(grid("vanilla", {1e-2: [0.9], 1e-3: [0.9], 1e-4: [0.1]})).variants[0]
    assert v.best_lr == 1e-3


def test_overall_success_rate_pools_all_runs():
    v = acc(rates_grid({1e-4: (1, 4), 1e-3: (4, 4), 1e-2: (2, 2)}), threshold=0.5).variants[0]
    assert (v.runs, v.successes, v.success_rate) == (10, 7, 0.7)
    assert (v.success_ci_low, v.success_ci_high) == wilson_interval(7, 10)


# --- Dodge et al.'s expected maximum -------------------------------------------------------------


def test_expected_max_hand_value_and_limits():
    values = np.array([0.9, 0.5, 0.7])
    curve = expected_max(values)
    assert len(curve) == 3
    assert curve[0] == pytest.approx(0.7, abs=1e-12)  # k=1: the mean
    # k=2, sorted 0.5, 0.7, 0.9: weights 1/9, 3/9, 5/9
    assert curve[1] == pytest.approx((0.5 * 1 + 0.7 * 3 + 0.9 * 5) / 9, abs=1e-12)
    assert np.all(np.diff(curve) >= 0)
    long = expected_max(np.linspace(0.0, 1.0, 50), k_max=2000)
    assert np.all(np.diff(long) >= -1e-15)
    assert long[-1] == pytest.approx(1.0, abs=1e-9)
    assert long[0] == pytest.approx(0.5, abs=1e-12)


def test_summary_expected_max_is_over_per_lr_means():
    v = acc(grid("vanilla", {1e-4: [0.4, 0.6], 1e-3: [0.9, 0.9], 1e-2: [0.7, 0.7]})).variants[0]
    assert v.expected_max_k == pytest.approx(expected_max(np.array([0.5, 0.9, 0.7])), abs=1e-12)
    assert v.expected_max_k[0] == pytest.approx(0.7, abs=1e-12)


# --- paired comparison ---------------------------------------------------------------------------

BASE = {1e-3: [0.80, 0.80, 0.80], 1e-2: [0.60, 0.60, 0.60]}
VARIANT = {1e-3: [0.90, 0.80, 0.75], 1e-2: [0.80, 0.70, 0.65]}  # differences 0.1, 0, -0.05 | 0.2, 0.1, 0.05
DIFFS = np.array([0.90 - 0.80, 0.0, 0.75 - 0.80, 0.80 - 0.60, 0.70 - 0.60, 0.65 - 0.60])


def paired_study(**kw) -> RobustnessSummary:
    return acc(grid("vanilla", BASE) + grid("h-detach", VARIANT), **kw)


def test_paired_mean_difference_and_probability_of_improvement():
    (c,) = paired_study().comparisons
    assert (c.variant, c.baseline, c.n_pairs) == ("h-detach", "vanilla", 6)
    assert c.mean_difference == pytest.approx(0.4 / 6, abs=1e-12)
    assert c.prob_improvement == pytest.approx(4.5 / 6, abs=1e-12)  # 4 wins, 1 tie, 1 loss


def test_wilcoxon_p_equals_scipy_on_the_same_differences():
    (c,) = paired_study().comparisons
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(DIFFS).pvalue, rel=1e-12)
    assert c.wilcoxon_method == "exact"  # 5 non-zero differences, two of them tied


def tied_differences(rng: np.random.Generator, n: int) -> np.ndarray:
    """n paired differences on a 0.01 grid: ties and zeros are common."""
    return np.round(rng.normal(0.01, 0.03, n), 2)


def signed_rank(d) -> tuple[float, str, float] | None:
    """The rank test on plain differences (no divergence)."""
    d = np.asarray(d, dtype=float)
    none = np.zeros(d.size, dtype=bool)
    return wilcoxon_signed_rank(rank_scores(d, none, none))


@pytest.mark.parametrize("n", range(2, 14))
def test_wilcoxon_with_ties_or_zeros_is_scipys_exhaustive_permutation_test(n):
    # scipy's method="auto" runs an exhaustive permutation test here (2**n evaluations)
    rng = np.random.default_rng(n)
    checked = 0
    for _ in range(8 if n <= 10 else 2):  # scipy's reference takes seconds from 11 pairs
        d = tied_differences(rng, n)
        if np.count_nonzero(d) < 2:
            continue
        result = signed_rank(d)
        assert result is not None and result[1] == "exact"
        assert result[0] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
        assert result[2] == 2 / 2 ** np.count_nonzero(d)  # all signs alike
        checked += 1
    assert checked


def test_wilcoxon_with_ties_beyond_scipys_permutation_limit_is_still_exact():
    d = tied_differences(np.random.default_rng(14), 14)
    assert len(np.unique(np.abs(d))) < 14  # ties
    exhaustive = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert signed_rank(d)[:2] == (pytest.approx(exhaustive, rel=1e-12), "exact")  # type: ignore[index]


@pytest.mark.parametrize("n", [2, 7, 20, 50])
def test_wilcoxon_without_ties_is_scipys_exact_test(n):
    d = np.random.default_rng(n).normal(0.01, 0.03, n)
    assert signed_rank(d)[:2] == (  # type: ignore[index]
        pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12),
        "exact",
    )


@pytest.mark.parametrize("n", [51, 200])
def test_wilcoxon_above_50_pairs_is_the_tie_corrected_normal_approximation(n):
    d = tied_differences(np.random.default_rng(n), 2 * n)
    d = np.r_[0.0, d[d != 0][:n]]  # n non-zero differences and a zero (dropped)
    assert np.count_nonzero(d) == n
    reference = stats.wilcoxon(d, method="asymptotic", correction=False).pvalue
    p, method, smallest = signed_rank(d)  # type: ignore[misc]
    assert (p, method) == (pytest.approx(reference, rel=1e-12), "normal")
    all_positive = stats.wilcoxon(np.abs(d), method="asymptotic", correction=False).pvalue
    assert smallest == pytest.approx(all_positive, rel=1e-9)


def test_differences_equal_but_for_rounding_are_ties():
    # 0.3 - 0.2 and 0.1 are not equal in floating point; ranked apart, the p-value would depend on it
    d = np.array([0.3 - 0.2, 0.1, 0.1, -0.2, 0.4])
    assert d[0] != d[1]
    assert signed_rank(d)[0] == pytest.approx(stats.wilcoxon(np.round(d, 12)).pvalue, rel=1e-12)  # type: ignore[index]


def test_the_rank_test_says_how_small_a_p_these_pairs_allow():
    (c,) = paired_study().comparisons  # 5 non-zero differences
    assert c.wilcoxon_min_p == 2 / 2**5 == 0.0625
    assert any("cannot give a p-value below 0.0625" in line for line in paired_study().caveats)


@pytest.mark.parametrize("pairs", [13, 50, 200])
def test_comparison_is_fast_at_every_size(pairs):
    # scipy's exhaustive permutation test took about 1 s at 13 tied pairs, in every summary and report
    metrics = list(np.round(np.random.default_rng(pairs).uniform(0.5, 1.0, pairs), 1))
    outcomes = grid("vanilla", {1e-3: [0.5] * pairs}) + grid("h-detach", {1e-3: metrics})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        (c,) = acc(outcomes).comparisons
        times.append(time.perf_counter() - started)
    assert c.wilcoxon_method == ("exact" if pairs <= 50 else "normal")
    if pairs != 50:  # scipy has no exact test with ties at 50 pairs
        reference = stats.wilcoxon(np.array(metrics) - 0.5, correction=False)
        assert c.wilcoxon_p == pytest.approx(reference.pvalue, rel=1e-9)
    assert min(times) < 0.05  # a few ms; the margin is for a busy machine


def wilson(k: float, n: int) -> tuple[float, float]:
    """The Wilson score interval, written out (z from scipy)."""
    z = stats.norm.ppf(0.975)
    centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def test_mean_difference_has_a_t_interval_and_p_better_a_wilson_interval():
    (c,) = paired_study().comparisons
    half = stats.t.ppf(0.975, 5) * np.std(DIFFS, ddof=1) / math.sqrt(6)
    assert c.mean_difference_ci_low == pytest.approx(DIFFS.mean() - half, abs=1e-12)
    assert c.mean_difference_ci_high == pytest.approx(DIFFS.mean() + half, abs=1e-12)
    assert (c.prob_improvement_ci_low, c.prob_improvement_ci_high) == pytest.approx(wilson(4.5, 6), abs=1e-12)
    assert paired_study() == paired_study()  # no resampling: the same study, the same summary


def test_learning_rates_with_one_pair_each_widen_the_interval():
    # the case: a stratified bootstrap gave (0.070, 0.073) and P(better) [0.667, 0.667]
    base = grid("vanilla", {lr: [0.5] for lr in (1e-4, 1e-3, 1e-2, 1e-1)} | {3e-1: [0.5, 0.5]})
    diffs = {1e-4: [-0.30], 1e-3: [0.50], 1e-2: [-0.20], 1e-1: [0.40], 3e-1: [0.01, 0.02]}
    variant = grid("h-detach", {lr: [0.5 + d for d in ds] for lr, ds in diffs.items()})
    (c,) = acc(base + variant).comparisons
    flat = np.array([d for ds in diffs.values() for d in ds])
    half = stats.t.ppf(0.975, 5) * np.std(flat, ddof=1) / math.sqrt(6)
    assert c.mean_difference == pytest.approx(0.43 / 6, abs=1e-12)  # 0.072
    assert (c.mean_difference_ci_low, c.mean_difference_ci_high) == pytest.approx(
        (0.43 / 6 - half, 0.43 / 6 + half)
    )
    assert c.mean_difference_ci_low < -0.2 and c.mean_difference_ci_high > 0.35
    assert c.prob_improvement == pytest.approx(4 / 6)
    assert (c.prob_improvement_ci_low, c.prob_improvement_ci_high) == pytest.approx(wilson(4, 6), abs=1e-12)


def test_learning_rates_are_pooled_so_opposite_effects_give_a_wide_interval():
    # +0.2 at one lr, -0.2 at the other: the interval spans both, it does not collapse to 0
    base = grid("vanilla", {1e-3: [0.5] * 4, 1e-2: [0.5] * 4})
    variant = grid("h-detach", {1e-3: [0.7] * 4, 1e-2: [0.3] * 4})
    (c,) = acc(base + variant).comparisons
    half = stats.t.ppf(0.975, 7) * np.std([0.2] * 4 + [-0.2] * 4, ddof=1) / math.sqrt(8)
    assert c.mean_difference == pytest.approx(0.0, abs=1e-12)
    assert (c.mean_difference_ci_low, c.mean_difference_ci_high) == pytest.approx((-half, half), abs=1e-12)
    assert (c.prob_improvement_ci_low, c.prob_improvement_ci_high) == pytest.approx(wilson(4, 8), abs=1e-12)


def test_the_comparison_per_learning_rate_has_each_pair_and_a_t_interval_of_its_own():
    (c,) = paired_study().comparisons
    assert [d.lr for d in c.by_lr] == [1e-3, 1e-2]
    for d, diffs in zip(c.by_lr, (DIFFS[:3], DIFFS[3:]), strict=True):
        assert (d.n_pairs, d.n_value_pairs) == (3, 3)
        assert [p.seed for p in d.pairs] == [0, 1, 2]
        assert [p.difference for p in d.pairs] == pytest.approx(list(diffs), abs=1e-12)
        half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
        assert d.mean_difference == pytest.approx(diffs.mean(), abs=1e-12)
        assert (d.mean_difference_ci_low, d.mean_difference_ci_high) == pytest.approx(
            (diffs.mean() - half, diffs.mean() + half), abs=1e-12
        )
    # 3 pairs at every lr: the per-lr intervals are unreliable, and the summary says so
    caveats = paired_study().caveats
    assert any("2 to 3 pairs per learning rate" in line and "unreliable" in line for line in caveats)


def test_per_learning_rate_pairs_say_which_side_diverged_and_few_pairs_at_some_lrs_are_named():
    base = grid("vanilla", {1e-3: [0.5, 0.5, 0.5], 1e-2: [0.5] * 5})
    variant = grid("h-detach", {1e-3: [0.6, 0.7, 0.8], 1e-2: [0.6, 0.7, 0.6, 0.7, 0.6]})
    base[0] = trial(lr=1e-3, seed=0, metric=None, diverged=True)
    variant[1] = trial("h-detach", lr=1e-3, seed=1, metric=None, diverged=True)
    variant[0] = trial("h-detach", lr=1e-3, seed=0, metric=None, diverged=True)
    summary = acc(base + variant, threshold=0.55)
    (c,) = summary.comparisons
    at_small, at_large = c.by_lr
    assert [(p.seed, p.diverged) for p in at_small.pairs] == [(0, "both"), (1, "variant"), (2, None)]
    assert at_small.pairs[0].difference is None and at_small.pairs[2].difference == pytest.approx(0.3)
    counts = (at_small.both_diverged, at_small.only_variant_diverged, at_small.only_baseline_diverged)
    assert counts == (1, 1, 0)
    assert at_small.n_value_pairs == 1 and at_small.mean_difference_ci_low is None  # one value: no interval
    assert at_large.n_value_pairs == 5 and at_large.mean_difference_ci_low is not None
    assert sum(d.n_pairs for d in c.by_lr) == c.n_pairs
    assert not any("unreliable" in line for line in summary.caveats)  # 1 pair (no interval) and 5
    variant[1] = trial("h-detach", lr=1e-3, seed=1, metric=0.65)
    few = acc(base + variant, threshold=0.55)
    assert [line for line in few.caveats if "unreliable" in line] == [
        "h-detach vs vanilla: 2 to 3 pairs at learning rate 0.001: the interval of the difference there is "
        "unreliable."
    ]


def test_comparison_without_pairs_enough_for_an_interval():
    one_pair = acc(grid("vanilla", {1e-3: [0.8]}) + grid("h-detach", {1e-3: [0.9]}))
    (c,) = one_pair.comparisons
    assert c.n_pairs == 1 and c.mean_difference == pytest.approx(0.1, abs=1e-12)
    assert c.mean_difference_ci_low is None and c.prob_improvement_ci_high is None
    assert any("no interval for the mean difference" in line for line in one_pair.caveats)
    disjoint = acc(grid("vanilla", {1e-3: [0.8]}) + grid("h-detach", {1e-2: [0.9]}))
    (d,) = disjoint.comparisons
    assert d.n_pairs == 0 and d.mean_difference is None and d.prob_improvement is None
    assert d.wilcoxon_p is None and d.success_rate_difference is None


def test_wilcoxon_needs_two_nonzero_differences():
    (c,) = acc(
        grid("vanilla", {1e-3: [0.8, 0.8, 0.8]}) + grid("h-detach", {1e-3: [0.9, 0.8, 0.8]})
    ).comparisons
    assert c.n_pairs == 3 and c.wilcoxon_p is None and c.wilcoxon_method is None
    assert c.wilcoxon_min_p is None and c.wilcoxon_p_holm is None


def test_baseline_defaults_to_first_variant_and_can_be_chosen():
    outcomes = grid("h-detach", VARIANT) + grid("vanilla", BASE) + grid("h-detach-25", BASE)
    default = acc(outcomes)
    assert default.baseline == "h-detach"
    assert [c.variant for c in default.comparisons] == ["vanilla", "h-detach-25"]
    chosen = acc(outcomes, baseline="vanilla")
    assert [c.variant for c in chosen.comparisons] == ["h-detach", "h-detach-25"]
    assert chosen.comparisons[0].mean_difference == pytest.approx(0.4 / 6, abs=1e-12)
    assert chosen.comparisons[1].mean_difference == 0.0 and chosen.comparisons[1].prob_improvement == 0.5


# --- lower-is-better metrics ---------------------------------------------------------------------


def test_lower_is_better_flips_every_direction():
    base = grid("vanilla", {1e-3: [0.20, 0.30, 0.25], 1e-2: [0.05, 0.08, 0.50]})
    variant = grid("h-detach", {1e-3: [0.10, 0.30, 0.20], 1e-2: [0.04, 0.09, 0.06]})
    summary = summarize(base + variant, "mse", 0.1, higher_is_better=False)
    vanilla, hdetach = summary.variants
    rows = vanilla.lrs
    assert rows[1].worst == 0.50 and rows[1].min == 0.05 and rows[1].max == 0.50
    assert rows[1].successes == 2 and rows[0].successes == 0  # <= 0.1 succeeds
    assert vanilla.best_lr == 1e-2 and vanilla.best_mean == pytest.approx(0.21, abs=1e-12)  # 0.21 < 0.25
    assert summarize(base, "mse", 0.1, higher_is_better=True).variants[0].best_lr == 1e-3
    assert hdetach.best_lr == 1e-2 and hdetach.worst_seed_at_best_lr == SeedValue(seed=1, value=0.09)
    means = [np.mean([0.10, 0.30, 0.20]), np.mean([0.04, 0.09, 0.06])]
    assert hdetach.expected_max_k[0] == pytest.approx(np.mean(means), abs=1e-12)
    assert hdetach.expected_max_k[1] == pytest.approx((means[0] * 1 + means[1] * 3) / 4, abs=1e-12)
    assert hdetach.expected_max_k[1] < hdetach.expected_max_k[0]  # expected best = expected minimum
    (c,) = summary.comparisons
    # baseline - variant, positive = variant better: 0.10, 0, 0.05 | 0.01, -0.01, 0.44
    assert c.mean_difference == pytest.approx(0.59 / 6, abs=1e-12)
    assert c.prob_improvement == pytest.approx(4.5 / 6, abs=1e-12)
    diffs = np.array([0.20, 0.30, 0.25, 0.05, 0.08, 0.50]) - np.array([0.10, 0.30, 0.20, 0.04, 0.09, 0.06])
    # 0.05 - 0.04 and 0.09 - 0.08 differ only by rounding: equal magnitudes, tied ranks
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(np.round(diffs, 12)).pvalue, rel=1e-12)


# --- diverged, failed and unfinished trials ------------------------------------------------------


def test_diverged_runs_are_failures_without_a_metric_and_failed_trials_only_counted():
    outcomes = [
        trial(seed=0, metric=0.9),
        trial(seed=1, metric=0.8),
        trial(seed=2, metric=None, diverged=True),
        trial(seed=3, metric=0.99, diverged=True),  # flagged: its metric is not trusted
        trial(seed=4, metric=math.nan),  # a non-finite metric reads as diverged
        trial(seed=5, metric=None),  # ran but reported nothing: no value, not diverged
        trial(seed=6, metric=0.95, state="failed"),
    ]
    summary = acc(outcomes)
    (row,) = summary.variants[0].lrs
    assert (row.seeds_run, row.failed, row.diverged, row.n_values, row.successes) == (6, 1, 3, 2, 1)
    assert row.success_rate == pytest.approx(1 / 6, abs=1e-12)
    assert row.mean == pytest.approx(0.85, abs=1e-12) and row.max == 0.9
    assert (summary.done, summary.failed, summary.cells_total) == (6, 1, 7)
    assert summary.variants[0].diverged == 3 and summary.variants[0].failed == 1


def test_a_divergence_is_a_loss_in_its_pair_and_the_mean_difference_leaves_it_out():
    base = grid("vanilla", {1e-3: [0.8, 0.8, 0.8, 0.8, 0.8]})
    variant = [
        trial("h-detach", seed=0, metric=0.9),
        trial("h-detach", seed=1, metric=0.9),  # the baseline diverged: a win
        trial("h-detach", seed=2, metric=None, diverged=True),  # a loss
        trial("h-detach", seed=3, metric=0.1, state="failed"),  # not run: no pair
        trial("h-detach", seed=4, metric=None, diverged=True),  # both diverged: a tie
    ]
    base[1] = trial(seed=1, metric=None, diverged=True)
    base[4] = trial(seed=4, metric=None, diverged=True)
    summary = acc(base + variant, threshold=0.75)
    (c,) = summary.comparisons
    assert (c.n_pairs, c.n_value_pairs, c.pairs_with_divergence, c.pairs_excluded) == (4, 1, 3, 0)
    assert (c.only_variant_diverged, c.only_baseline_diverged, c.both_diverged) == (1, 1, 1)
    assert c.mean_difference == pytest.approx(0.1, abs=1e-12) and c.mean_difference_ci_low is None
    assert c.prob_improvement == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    # successes over the 4 pairs: variant 1, 1, 0, 0; baseline 1, 0, 1, 0
    assert c.success_rate_difference == pytest.approx(0.0, abs=1e-12)
    # ranks: the finite difference 1, the two decided by a divergence tied above it; the tie is dropped
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon([0.1, 5.0, -5.0]).pvalue, rel=1e-12)
    assert any("3 of 4 pairs involve a divergence" in line for line in summary.caveats)


def test_a_variant_that_diverges_more_is_not_judged_on_its_lucky_runs():
    base = grid("vanilla", {1e-2: [0.80] * 6})
    variant = [trial("h-detach", lr=1e-2, seed=s, metric=0.95) for s in (0, 1)] + [
        trial("h-detach", lr=1e-2, seed=s, metric=None, diverged=True) for s in (2, 3, 4, 5)
    ]
    (c,) = acc(base + variant).comparisons
    assert c.mean_difference == pytest.approx(0.15)  # the survivors look better...
    assert c.prob_improvement == pytest.approx(2 / 6)  # ...but it loses four of six pairs
    assert c.success_rate_difference == pytest.approx(2 / 6 - 0.0)


def test_the_success_rate_difference_is_paired():
    # the case: unpaired rates read 0.0; on the lr both ran the variant is 0.5 worse
    base = grid("vanilla", {1e-3: [0.9] * 4, 1e-1: [0.1] * 4})
    variant = grid("h-detach", {1e-3: [0.9, 0.9, 0.1, 0.1]})
    (c,) = acc(base + variant).comparisons
    assert c.n_pairs == 4 and c.success_rate_difference == pytest.approx(-0.5)


def test_the_best_lr_is_chosen_by_success_first_and_a_diverged_seed_is_the_worst():
    # the case: at 1e-2 one seed reached 0.99 and four diverged
    outcomes = [*grid("vanilla", {1e-3: [0.90] * 5}), trial(lr=1e-2, seed=0, metric=0.99)]
    outcomes += [trial(lr=1e-2, seed=s, metric=None, diverged=True) for s in range(1, 5)]
    v = acc(outcomes).variants[0]
    assert v.best_lr == 1e-3 and v.best_mean == pytest.approx(0.9)
    high = v.lrs[1]
    assert high.worst is None and high.worst_diverged and high.mean == 0.99
    # the expected best keeps 1e-2, its diverged runs at the study's worst value (0.9)
    assert v.expected_max_k == pytest.approx(expected_max(np.array([0.90, (0.99 + 4 * 0.90) / 5])))
    only = acc([*grid("vanilla", {0.001: [0.99, 0.7]}), trial(lr=0.001, seed=2, metric=None, diverged=True)])
    w = only.variants[0]
    assert w.worst_seed_at_best_lr == SeedValue(seed=2, value=None, diverged=True)
    spread = w.seed_spread_at_best_lr
    assert spread is not None and (spread.max_minus_min, spread.diverged) == (None, 1)
    assert spread.std == pytest.approx(np.std([0.99, 0.7], ddof=1))


def test_a_learning_rate_where_every_run_diverged_stays_in_the_expected_best_as_the_worst():
    outcomes = grid("vanilla", {1e-3: [0.6, 0.8]}) + [
        trial(lr=1e-1, seed=s, metric=None, diverged=True) for s in (0, 1)
    ]
    v = acc(outcomes).variants[0]
    assert v.expected_max_k == pytest.approx(expected_max(np.array([0.7, 0.6])))  # floor: 0.6
    assert v.expected_max_k[0] < 0.7  # dropping the lr would have claimed 0.7


def test_robust_with_confidence_needs_the_wilson_lower_bound_and_enough_seeds():
    summary = acc(rates_grid({1e-4: (2, 2), 1e-3: (4, 4), 1e-2: (16, 16), 1e-1: (15, 15)}), threshold=0.5)
    v = summary.variants[0]
    assert v.robust_lrs == [1e-4, 1e-3, 1e-2, 1e-1]
    assert v.confidently_robust_lrs == [1e-2]  # 16/16: lower bound 0.806; 15/15: 0.796
    assert (v.confidently_robust_lr_low, v.confidently_robust_lr_high) == (1e-2, 1e-2)
    assert wilson_interval(16, 16)[0] >= 0.8 > wilson_interval(15, 15)[0]
    assert summary.seeds_for_confident_robustness == 16
    assert (
        acc(rates_grid({1e-3: (2, 2)}), threshold=0.5, robust_level=1.0).seeds_for_confident_robustness
        is None
    )
    few = acc(rates_grid({1e-3: (3, 3)}), threshold=0.5)
    assert few.caveats[0].startswith("3 seeds per learning rate") and "fewer than 16 seeds" in few.caveats[0]


def test_several_variants_get_holm_adjusted_p_values():
    outcomes = (
        grid("vanilla", BASE)
        + grid("h-detach", VARIANT)
        + grid("h-detach-25", BASE | {1e-3: [0.9, 0.85, 0.95]})
    )
    summary = acc(outcomes)
    raw = [c.wilcoxon_p for c in summary.comparisons]
    assert all(p is not None for p in raw)
    low, high = sorted(raw)  # type: ignore[type-var]
    expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    assert [c.wilcoxon_p_holm for c in summary.comparisons] == pytest.approx([expected[p] for p in raw])
    assert any("Holm-adjusted" in line for line in summary.caveats)
    (single,) = paired_study().comparisons
    assert single.wilcoxon_p_holm == single.wilcoxon_p


def test_partial_study_reports_completeness():
    outcomes = [
        *rates_grid({1e-4: (3, 3), 1e-2: (3, 3)}),
        trial(lr=1e-3, seed=0, metric=None, state="queued"),
        trial(lr=1e-3, seed=1, metric=None, state="running"),
        trial(lr=1e-3, seed=2, metric=None, state="cancelled"),
        trial(lr=1e-4, seed=9, metric=None, state="failed"),
    ]
    summary = acc(outcomes, threshold=0.5)
    assert (summary.cells_total, summary.done, summary.failed, summary.cancelled, summary.pending) == (
        10,
        6,
        1,
        1,
        2,
    )
    assert not summary.complete
    v = summary.variants[0]
    middle = v.lrs[1]
    assert middle.lr == 1e-3 and middle.seeds_run == 0 and middle.success_rate is None
    assert middle.success_ci_low is None and middle.mean is None
    assert v.robust_lrs == [1e-4, 1e-2] and not v.robust_contiguous  # an lr that has not run breaks the run
    assert v.success_auc == 1.0  # over the lrs that ran
    finished = acc([o for o in outcomes if o.state not in ("queued", "running")], threshold=0.5)
    assert finished.complete and finished.pending == 0


# --- schema and inputs ---------------------------------------------------------------------------


def test_summary_is_json_without_nan_and_round_trips():
    outcomes = [
        *grid("vanilla", BASE),
        *grid("h-detach", VARIANT),
        trial("h-detach", lr=1e-1, seed=0, metric=math.inf),
        trial("vanilla", lr=1e-1, seed=0, metric=None, state="queued"),
    ]
    summary = acc(outcomes)
    text = summary.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["variants"][0]["lrs"][-1]["mean"] is None
    assert RobustnessSummary.model_validate_json(text) == summary


def test_schema_refuses_nan():
    with pytest.raises(ValueError):
        SeedSpread(max_minus_min=math.nan, std=None)


@pytest.mark.parametrize(
    "model",
    [
        RobustnessSummary,
        VariantSummary,
        LRStats,
        Comparison,
        LRDifference,
        PairDifference,
        SeedValue,
        SeedSpread,
    ],
)
def test_every_schema_field_is_described(model: type[BaseModel]):
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert undocumented == []


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError, match="duplicate trial"):
        acc([trial(seed=1), trial(seed=1)])
    with pytest.raises(ValueError, match="two p_detach"):
        acc(
            [trial("h-detach"), TrialOutcome(variant="h-detach", p_detach=0.1, lr=1e-3, seed=1, state="done")]
        )
    with pytest.raises(ValueError, match="baseline"):
        acc([trial()], baseline="h-detach")
    with pytest.raises(ValueError, match="no trials"):
        acc([])
    with pytest.raises(ValueError, match="robust_level"):
        acc([trial()], robust_level=0.0)


def test_importing_the_module_loads_neither_torch_nor_scipy_stats():
    code = "import sys, studies.robustness; print(sorted({'torch', 'scipy.stats'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_metric_too_large_to_average_is_a_blown_up_run():
    outcomes = grid("vanilla", {1e-3: [1e308, 1.7e308]}) + grid("h-detach", {1e-3: [0.1, 0.2]})
    summary = summarize(outcomes, "mse", 0.5, higher_is_better=False)
    assert summary.variants[0].diverged == 2 and summary.variants[0].lrs[0].mean is None
    assert summary.comparisons[0].only_baseline_diverged == 2


def test_means_equal_but_for_rounding_tie_and_the_smaller_lr_wins():
    v = acc(grid("vanilla", {1e-3: [0.3, 0.2, 0.1], 1e-2: [0.1, 0.2, 0.3]}), threshold=0.25).variants[0]
    assert v.lrs[0].mean != v.lrs[1].mean  # 0.19999999999999998 and 0.20000000000000004
    assert v.best_lr == 1e-3


def test_a_run_without_a_metric_leaves_its_pair_out_even_against_a_divergence():
    base = [trial(seed=0, metric=None, diverged=True), trial(seed=1, metric=0.8), trial(seed=2, metric=0.8)]
    variant = [trial("h-detach", seed=0, metric=None), trial("h-detach", seed=1, metric=0.9)]
    variant.append(trial("h-detach", seed=2, metric=0.7))
    (c,) = acc(base + variant).comparisons
    assert (c.n_pairs, c.pairs_excluded, c.only_baseline_diverged) == (2, 1, 0)
    assert c.prob_improvement == 0.5
    single = acc(grid("vanilla", {1e-3: [0.9]}) + grid("h-detach", {1e-3: [0.8]}))
    assert any("1 pair, so" in line for line in single.caveats)
    assert single.caveats[0].startswith("1 seed per learning rate")

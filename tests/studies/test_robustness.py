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
    LRStats,
    RobustnessSummary,
    SeedSpread,
    SeedValue,
    TrialOutcome,
    VariantSummary,
    expected_max,
    summarize,
    wilson_interval,
)
from studies.robustness._paired import wilcoxon_signed_rank

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


@pytest.mark.parametrize("n", range(2, 14))
def test_wilcoxon_with_ties_or_zeros_is_scipys_exhaustive_permutation_test(n):
    # scipy's method="auto" runs an exhaustive permutation test here (2**n evaluations)
    rng = np.random.default_rng(n)
    checked = 0
    for _ in range(8):
        d = tied_differences(rng, n)
        if np.count_nonzero(d) < 2:
            continue
        p, method = wilcoxon_signed_rank(d)
        assert method == "exact"
        assert p == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
        checked += 1
    assert checked


def test_wilcoxon_with_ties_beyond_scipys_permutation_limit_is_still_exact():
    d = tied_differences(np.random.default_rng(14), 14)
    assert len(np.unique(np.abs(d))) < 14  # ties
    exhaustive = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert wilcoxon_signed_rank(d) == (pytest.approx(exhaustive, rel=1e-12), "exact")


@pytest.mark.parametrize("n", [2, 7, 20, 50])
def test_wilcoxon_without_ties_is_scipys_exact_test(n):
    d = np.random.default_rng(n).normal(0.01, 0.03, n)
    assert wilcoxon_signed_rank(d) == (
        pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12),
        "exact",
    )


@pytest.mark.parametrize("n", [51, 200])
def test_wilcoxon_above_50_pairs_is_the_tie_corrected_normal_approximation(n):
    d = tied_differences(np.random.default_rng(n), 2 * n)
    d = np.r_[0.0, d[d != 0][:n]]  # n non-zero differences and a zero (dropped)
    assert np.count_nonzero(d) == n
    reference = stats.wilcoxon(d, method="asymptotic", correction=False).pvalue
    assert wilcoxon_signed_rank(d) == (pytest.approx(reference, rel=1e-12), "normal")


def test_comparison_with_13_tied_pairs_is_fast():
    # scipy's exhaustive permutation test took about 1 s here, in every summary, report and plot
    metrics = [0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 1.0]
    base = grid("vanilla", {1e-3: [0.5] * 13})
    variant = grid("h-detach", {1e-3: metrics})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        (c,) = acc(base + variant, n_boot=100).comparisons
        times.append(time.perf_counter() - started)
    assert (c.n_pairs, c.wilcoxon_method) == (13, "exact")
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(np.array(metrics) - 0.5).pvalue, rel=1e-12)
    assert min(times) < 0.05  # about 1 ms; the margin is for a busy machine


def test_bootstrap_intervals_hold_the_estimate_and_follow_the_seed():
    (c,) = paired_study(seed=3).comparisons
    assert c.mean_difference is not None and c.prob_improvement is not None
    assert c.mean_difference_ci_low is not None and c.mean_difference_ci_high is not None
    assert c.mean_difference_ci_low <= c.mean_difference <= c.mean_difference_ci_high
    assert c.mean_difference_ci_low < c.mean_difference_ci_high
    assert c.prob_improvement_ci_low is not None and c.prob_improvement_ci_high is not None
    assert c.prob_improvement_ci_low <= c.prob_improvement <= c.prob_improvement_ci_high
    assert paired_study(seed=3) == paired_study(seed=3)
    other = paired_study(seed=4).comparisons[0]
    assert (other.mean_difference_ci_low, other.mean_difference_ci_high) != (
        c.mean_difference_ci_low,
        c.mean_difference_ci_high,
    )


def test_bootstrap_keeps_each_lr_stratum_size():
    # every pair at 1e-3 differs by +0.2, every pair at 1e-2 by -0.2: a stratified resample
    # always has mean 0 and wins exactly half; an unstratified one would not
    base = grid("vanilla", {1e-3: [0.5] * 4, 1e-2: [0.5] * 4})
    variant = grid("h-detach", {1e-3: [0.7] * 4, 1e-2: [0.3] * 4})
    (c,) = acc(base + variant).comparisons
    assert c.mean_difference_ci_low == pytest.approx(0.0, abs=1e-12)
    assert c.mean_difference_ci_high == pytest.approx(0.0, abs=1e-12)
    assert (c.prob_improvement_ci_low, c.prob_improvement_ci_high) == (0.5, 0.5)


def test_comparison_without_resampling_room_or_pairs():
    one_seed = acc(grid("vanilla", {1e-3: [0.8], 1e-2: [0.7]}) + grid("h-detach", {1e-3: [0.9], 1e-2: [0.9]}))
    (c,) = one_seed.comparisons
    assert c.n_pairs == 2 and c.mean_difference == pytest.approx(0.15, abs=1e-12)
    assert c.mean_difference_ci_low is None and c.prob_improvement_ci_high is None  # one pair per lr
    disjoint = acc(grid("vanilla", {1e-3: [0.8]}) + grid("h-detach", {1e-2: [0.9]}))
    (d,) = disjoint.comparisons
    assert d.n_pairs == 0 and d.mean_difference is None and d.prob_improvement is None
    assert d.wilcoxon_p is None


def test_wilcoxon_needs_two_nonzero_differences():
    (c,) = acc(
        grid("vanilla", {1e-3: [0.8, 0.8, 0.8]}) + grid("h-detach", {1e-3: [0.9, 0.8, 0.8]})
    ).comparisons
    assert c.n_pairs == 3 and c.wilcoxon_p is None and c.wilcoxon_method is None


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
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(diffs).pvalue, rel=1e-12)


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


def test_diverged_pairs_are_left_out_of_the_paired_statistics_but_counted():
    base = grid("vanilla", {1e-3: [0.8, 0.8, 0.8, 0.8]})
    variant = [
        trial("h-detach", seed=0, metric=0.9),
        trial("h-detach", seed=1, metric=0.9),
        trial("h-detach", seed=2, metric=None, diverged=True),
        trial("h-detach", seed=3, metric=0.1, state="failed"),
    ]
    base[1] = trial(seed=1, metric=None, diverged=True)
    (c,) = acc(base + variant, threshold=0.75).comparisons
    assert (c.n_pairs, c.pairs_excluded) == (1, 2)
    assert (c.only_variant_diverged, c.only_baseline_diverged) == (1, 1)
    assert c.mean_difference == pytest.approx(0.1, abs=1e-12)
    assert c.success_rate_difference == pytest.approx(2 / 3 - 3 / 4, abs=1e-12)


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
    "model", [RobustnessSummary, VariantSummary, LRStats, Comparison, SeedValue, SeedSpread]
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

"""The robustness summary as the REST API documents it: pydantic models, no NaN (None = undefined).

"Better" and "worst" follow the metric's direction (`higher_is_better`). Metric statistics are over
runs that did not diverge and reported a metric; success rates count every run, a diverged run as a
failure (see `studies.robustness._outcome` for the full rule).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STATS_NOTE = "over runs that did not diverge and reported a metric; None if there are none"


class _Schema(BaseModel):
    # allow_inf_nan=False: a NaN reaching the API schema is a bug, caught when the model is built
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class LRStats(_Schema):
    """One variant at one learning rate, across seeds."""

    lr: float = Field(description="learning rate")
    seeds_run: int = Field(description="trials that ran to completion (state done), diverged ones included")
    failed: int = Field(description="trials in state failed (left out of every statistic)")
    diverged: int = Field(description="runs that diverged (a failure in the success rate, no metric value)")
    successes: int = Field(description="runs whose metric reached the threshold")
    n_values: int = Field(
        description="runs contributing to the metric statistics (not diverged, metric known)"
    )
    mean: float | None = Field(description=f"mean metric {_STATS_NOTE}")
    median: float | None = Field(description=f"median metric {_STATS_NOTE}")
    std: float | None = Field(
        description="sample standard deviation (ddof=1) of the metric; None if < 2 values"
    )
    worst: float | None = Field(
        description=f"worst seed's metric in the metric's direction {_STATS_NOTE}; None too when a seed "
        "diverged (then worst_diverged)"
    )
    worst_diverged: bool = Field(description="a seed diverged: the worst seed is a divergence")
    min: float | None = Field(description=f"smallest metric value {_STATS_NOTE}")
    max: float | None = Field(description=f"largest metric value {_STATS_NOTE}")
    mean_ci_low: float | None = Field(
        description="95% t-interval of the mean over the seeds' values, lower end: mean +- t(0.975, n-1) "
        "s/sqrt(n); None with fewer than 2 values"
    )
    mean_ci_high: float | None = Field(description="the same interval, upper end")
    success_rate: float | None = Field(description="successes / seeds_run; None if nothing ran")
    success_ci_low: float | None = Field(description="Wilson 95% interval of the success rate, lower end")
    success_ci_high: float | None = Field(description="Wilson 95% interval of the success rate, upper end")
    median_steps_to_threshold: float | None = Field(
        description="median steps to reach the threshold among successes that report it; None if none"
    )


class SeedValue(_Schema):
    """A seed and its metric value, or its divergence."""

    seed: int = Field(description="training seed")
    value: float | None = Field(description="the seed's metric value; None if it diverged")
    diverged: bool = Field(False, description="the seed diverged")


class SeedSpread(_Schema):
    """How far apart seeds land at one learning rate."""

    max_minus_min: float | None = Field(
        description="largest minus smallest metric value across seeds; None when a seed diverged (unbounded)"
    )
    diverged: int = Field(0, description="seeds that diverged")
    std: float | None = Field(description="sample standard deviation (ddof=1); None if < 2 values")


class VariantSummary(_Schema):
    """One variant across the learning-rate grid."""

    name: str = Field(description="variant name")
    p_detach: float = Field(description="the variant's detach probability")
    runs: int = Field(description="trials that ran (state done) across all learning rates")
    successes: int = Field(description="runs whose metric reached the threshold")
    diverged: int = Field(description="runs that diverged")
    failed: int = Field(description="trials in state failed")
    lrs: list[LRStats] = Field(description="per learning rate, sorted by lr")
    success_rate: float | None = Field(
        description="successes / runs over all learning rates; None if none ran"
    )
    success_ci_low: float | None = Field(description="Wilson 95% interval of the overall rate, lower end")
    success_ci_high: float | None = Field(description="Wilson 95% interval of the overall rate, upper end")
    best_lr: float | None = Field(
        description="learning rate with the highest success rate, then the best mean metric over seeds that "
        "did not diverge, then the smallest; None if nothing ran"
    )
    best_mean: float | None = Field(description="mean metric at best_lr (seeds that did not diverge)")
    worst_seed_at_best_lr: SeedValue | None = Field(
        description="the worst seed at best_lr: a diverged one if any (the smallest such seed), else the one "
        "with the worst metric"
    )
    seed_spread_at_best_lr: SeedSpread | None = Field(
        description="spread of the metric across seeds at best_lr"
    )
    robust_lrs: list[float] = Field(
        description="learning rates whose success rate is >= robust_level, sorted"
    )
    robust_lr_low: float | None = Field(description="smallest robust learning rate; None if none qualify")
    robust_lr_high: float | None = Field(description="largest robust learning rate; None if none qualify")
    robust_width_decades: float | None = Field(
        description="log10(robust_lr_high / robust_lr_low): 0 for one lr, None if none qualify; it spans "
        "min..max of the robust lrs, gaps included (see robust_contiguous)"
    )
    robust_contiguous: bool = Field(
        description="the robust lrs are consecutive in this variant's grid (False if there are none)"
    )
    confidently_robust_lrs: list[float] = Field(
        description="learning rates whose success rate's Wilson 95% lower bound is >= robust_level: robust "
        "with confidence, not on the point estimate (see RobustnessSummary.seeds_for_confident_robustness)"
    )
    confidently_robust_lr_low: float | None = Field(description="smallest of them; None if none")
    confidently_robust_lr_high: float | None = Field(description="largest of them; None if none")
    success_auc: float | None = Field(
        description="area under success rate vs log10(lr) (trapezoid rule) over learning rates that ran, "
        "divided by their log10 span, in [0, 1]; with one such lr, its success rate; None if none ran"
    )
    expected_max_k: list[float] = Field(
        description="element k-1: expected best mean metric when k learning rates are drawn at random "
        "with replacement, k = 1..n, over the n learning rates that ran (Dodge et al. 2019, 'Show your "
        "work'); a diverged run enters its lr's mean as the worst value any run of the study reached; an "
        "lr whose runs all reported no metric, or a study where no run has a value, leaves n smaller"
    )


class PairDifference(_Schema):
    """One (lr, seed) pair of a comparison."""

    seed: int = Field(description="training seed")
    difference: float | None = Field(
        description="variant - baseline when higher is better, baseline - variant otherwise (positive = "
        "variant better); None when a side diverged"
    )
    diverged: Literal["variant", "baseline", "both"] | None = Field(
        None, description="which side diverged, if any (the other side wins; both: a tie)"
    )


class LRDifference(_Schema):
    """The paired comparison at one learning rate: what the paired-difference plot shows."""

    lr: float = Field(description="learning rate")
    n_pairs: int = Field(description="pairs both ran at this lr, divergences included")
    n_value_pairs: int = Field(description="pairs where neither diverged: the pairs of mean_difference")
    only_variant_diverged: int = Field(description="pairs where only the variant diverged (a loss)")
    only_baseline_diverged: int = Field(description="pairs where only the baseline diverged (a win)")
    both_diverged: int = Field(description="pairs where both diverged (a tie)")
    mean_difference: float | None = Field(
        description="mean paired difference over the value pairs (positive = variant better); None without"
    )
    mean_difference_ci_low: float | None = Field(
        description="95% t-interval over this lr's value pairs, lower end; None with fewer than 2 (with 2 or "
        "3 it rests on 1 or 2 degrees of freedom and is unreliable: the caveats say so)"
    )
    mean_difference_ci_high: float | None = Field(description="the same interval, upper end")
    pairs: list[PairDifference] = Field(description="each pair, by seed")


class Comparison(_Schema):
    """A variant against the baseline, paired on (lr, seed); positive differences favour the variant.

    A diverged run is the worst outcome: the other side of its pair wins (a tie if both diverged)."""

    variant: str = Field(description="the compared variant")
    baseline: str = Field(description="the baseline variant")
    n_pairs: int = Field(
        description="(lr, seed) pairs both ran, divergences included, pairs_excluded not: the pairs of "
        "prob_improvement, the rank test and success_rate_difference"
    )
    n_value_pairs: int = Field(description="pairs where neither diverged: the pairs of mean_difference")
    pairs_with_divergence: int = Field(description="pairs where at least one side diverged")
    pairs_excluded: int = Field(
        description="pairs both ran but left out: a side reported no metric without diverging"
    )
    only_variant_diverged: int = Field(description="pairs where only the variant diverged (a loss)")
    only_baseline_diverged: int = Field(description="pairs where only the baseline diverged (a win)")
    both_diverged: int = Field(description="pairs where both diverged (a tie)")
    mean_difference: float | None = Field(
        description="mean paired difference over the value pairs, variant - baseline when higher is better, "
        "baseline - variant otherwise (positive = variant better); None without value pairs"
    )
    mean_difference_ci_low: float | None = Field(
        description="95% t-interval over the value pairs, lower end: mean +- t(0.975, n-1) s/sqrt(n), "
        "learning rates pooled (s includes the spread between them); None with fewer than 2 value pairs"
    )
    mean_difference_ci_high: float | None = Field(description="the same interval, upper end")
    prob_improvement: float | None = Field(
        description="P(variant better than baseline): fraction of pairs the variant wins plus half the ties"
    )
    prob_improvement_ci_low: float | None = Field(
        description="95% Wilson score interval of wins (ties half) out of n_pairs, lower end; None with "
        "fewer than 2 pairs"
    )
    prob_improvement_ci_high: float | None = Field(description="the same interval, upper end")
    wilcoxon_p: float | None = Field(
        description="two-sided Wilcoxon signed-rank p-value over all pairs (differences on a grid of 1e-9 of "
        "the largest; zero differences and pairs where both diverged dropped; ties given their average rank; "
        "a pair one side diverged ranks above every finite difference); None with fewer than 2 non-zero"
    )
    wilcoxon_method: Literal["exact", "normal"] | None = Field(
        description="'exact' with at most 50 non-zero differences (the exact null distribution over all 2**n "
        "sign patterns, given the ranks); 'normal' above (normal approximation, variance corrected for ties, "
        "no continuity correction); None when wilcoxon_p is None"
    )
    wilcoxon_min_p: float | None = Field(
        description="the smallest p-value the test could give with these pairs (exact: 2 / 2**n for n "
        "non-zero differences: 0.0625 with 5); a p-value can be no stronger than this"
    )
    wilcoxon_p_holm: float | None = Field(
        description="wilcoxon_p adjusted by Holm's step-down method over the study's comparisons (equal to "
        "wilcoxon_p when there is one comparison)"
    )
    success_rate_difference: float | None = Field(
        description="success rate over the pairs both ran, variant - baseline (a diverged run is a failure); "
        "paired, so learning rates only one variant ran do not enter"
    )
    by_lr: list[LRDifference] = Field(
        default_factory=list, description="the pairs per learning rate, sorted by lr, with their intervals"
    )


class TransferStats(_Schema):
    """Copying: how one variant's models at one learning rate do at another delay (transfer copying)."""

    variant: str = Field(description="variant name")
    lr: float = Field(description="learning rate")
    T: int = Field(description="the delay the models were tested at")
    runs: int = Field(description="runs with a finite transfer accuracy (diverged runs have none)")
    mean: float = Field(description="mean accuracy over those runs")
    median: float = Field(description="median accuracy")
    min: float = Field(description="lowest accuracy")
    max: float = Field(description="highest accuracy")


class RobustnessSummary(_Schema):
    """How robust each variant's training is to the learning rate, and how it compares to the baseline."""

    metric: str = Field(description="name of the success metric, e.g. test_accuracy")
    threshold: float = Field(description="a run succeeds when its metric is at least this good")
    higher_is_better: bool = Field(description="direction of the metric (accuracy: true; loss, mse: false)")
    baseline: str = Field(description="variant the others are compared to")
    robust_level: float = Field(description="success rate a learning rate needs to count as robust")
    cells_total: int = Field(description="trials in the study grid")
    done: int = Field(description="trials in state done (diverged runs included)")
    failed: int = Field(description="trials in state failed")
    cancelled: int = Field(description="trials in state cancelled")
    pending: int = Field(description="trials queued or running")
    complete: bool = Field(
        description="no trial is queued or running: every cell reached a final state (done, failed or "
        "cancelled), so the summary will not change"
    )
    variants: list[VariantSummary] = Field(description="per variant, in order of first appearance")
    comparisons: list[Comparison] = Field(description="each non-baseline variant against the baseline")
    seeds_for_confident_robustness: int | None = Field(
        description="the fewest seeds at which a learning rate can be robust with confidence: n successes "
        "out of n whose Wilson 95% lower bound reaches robust_level (16 for 0.8); None if no n can"
    )
    caveats: list[str] = Field(
        default_factory=list,
        description="what the numbers cannot support at this study's size, in words (few seeds, no "
        "interval, the smallest reachable p-value, several comparisons)",
    )
    transfer: list[TransferStats] = Field(
        default_factory=list,
        description="copying with transfer_T: accuracy at the other delays per variant, lr and delay, of the "
        "same model the metric comes from; empty otherwise",
    )
    data: list[str] = Field(
        default_factory=list,
        description="the task and data the finished trials ran on, as their workers reported it (one entry "
        "unless workers differed, e.g. full MNIST on one and the subset on another)",
    )

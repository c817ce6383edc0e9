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
    worst: float | None = Field(description=f"worst seed's metric in the metric's direction {_STATS_NOTE}")
    min: float | None = Field(description=f"smallest metric value {_STATS_NOTE}")
    max: float | None = Field(description=f"largest metric value {_STATS_NOTE}")
    success_rate: float | None = Field(description="successes / seeds_run; None if nothing ran")
    success_ci_low: float | None = Field(description="Wilson 95% interval of the success rate, lower end")
    success_ci_high: float | None = Field(description="Wilson 95% interval of the success rate, upper end")
    median_steps_to_threshold: float | None = Field(
        description="median steps to reach the threshold among successes that report it; None if none"
    )


class SeedValue(_Schema):
    """A seed and its metric value."""

    seed: int = Field(description="training seed")
    value: float = Field(description="the seed's metric value")


class SeedSpread(_Schema):
    """How far apart seeds land at one learning rate."""

    max_minus_min: float = Field(description="largest minus smallest metric value across seeds")
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
        description="learning rate with the best mean metric (ties: the smallest lr); None if no means"
    )
    best_mean: float | None = Field(description="mean metric at best_lr")
    worst_seed_at_best_lr: SeedValue | None = Field(description="the seed with the worst metric at best_lr")
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
    success_auc: float | None = Field(
        description="area under success rate vs log10(lr) (trapezoid rule) over learning rates that ran, "
        "divided by their log10 span, in [0, 1]; with one such lr, its success rate; None if none ran"
    )
    expected_max_k: list[float] = Field(
        description="element k-1: expected best mean metric when k learning rates are drawn at random "
        "with replacement, k = 1..n, over the n per-lr means (Dodge et al. 2019, 'Show your work')"
    )


class Comparison(_Schema):
    """A variant against the baseline, paired on (lr, seed); positive differences favour the variant."""

    variant: str = Field(description="the compared variant")
    baseline: str = Field(description="the baseline variant")
    n_pairs: int = Field(
        description="(lr, seed) pairs where both ran, neither diverged and both have a metric"
    )
    pairs_excluded: int = Field(description="pairs where both ran but at least one has no metric value")
    only_variant_diverged: int = Field(description="pairs where both ran and only the variant diverged")
    only_baseline_diverged: int = Field(description="pairs where both ran and only the baseline diverged")
    mean_difference: float | None = Field(
        description="mean paired difference, variant - baseline when higher is better, baseline - variant "
        "otherwise (positive = variant better); None without pairs"
    )
    mean_difference_ci_low: float | None = Field(
        description="95% percentile bootstrap interval, lower end: pairs resampled with replacement within "
        "each lr, stratum sizes kept; None unless some lr has >= 2 pairs"
    )
    mean_difference_ci_high: float | None = Field(description="the same interval, upper end")
    prob_improvement: float | None = Field(
        description="P(variant better than baseline): fraction of pairs the variant wins plus half the ties"
    )
    prob_improvement_ci_low: float | None = Field(
        description="95% bootstrap interval (same resamples as the mean difference), lower end"
    )
    prob_improvement_ci_high: float | None = Field(description="the same interval, upper end")
    wilcoxon_p: float | None = Field(
        description="two-sided Wilcoxon signed-rank p-value of the differences (zero differences dropped, "
        "tied |differences| given their average rank); None with fewer than 2 non-zero differences"
    )
    wilcoxon_method: Literal["exact", "normal"] | None = Field(
        description="how wilcoxon_p was computed: 'exact' with at most 50 non-zero differences (the exact "
        "null distribution over all 2**n sign patterns, given the ranks: with ties or zeros, the exhaustive "
        "permutation test); 'normal' above 50 (normal approximation, variance corrected for ties, no "
        "continuity correction); None when wilcoxon_p is None"
    )
    success_rate_difference: float | None = Field(
        description="overall success rate, variant - baseline (diverged runs count as failures)"
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
    n_boot: int = Field(description="bootstrap resamples per comparison")
    seed: int = Field(description="seed of the bootstrap (numpy default_rng); same seed, same summary")
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

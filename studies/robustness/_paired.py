"""A variant against the baseline, paired on (lr, seed)."""

from __future__ import annotations

import numpy as np

from studies.robustness._bootstrap import percentile_interval, stratified_bootstrap_means
from studies.robustness._outcome import TrialTable
from studies.robustness._schema import Comparison


def _rows_by_key(table: TrialTable, code: int) -> dict[tuple[float, int], int]:
    return {(lr, int(table.seed[i])): int(i) for lr, rows in table.by_lr[code] for i in rows}


def _strata(lrs: np.ndarray) -> list[np.ndarray]:
    """Indices of `lrs` grouped by learning rate."""
    order = np.argsort(lrs, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(lrs[order])) + 1) if lrs.size else []


# Wilcoxon signed-rank p-values. Zero differences are dropped (Wilcoxon's convention, scipy's
# zero_method="wilcox"), and the n non-zero ones are ranked by |difference|, tied values getting
# their average rank.
#  - n <= EXACT_MAX_PAIRS: exact. Under the null each sign is + or - with probability 1/2, so the
#    distribution of the sum of positive ranks is counted over all 2**n sign patterns by dynamic
#    programming over the (doubled, hence integer) ranks: O(n**3) additions, under a millisecond at n = 50.
#    With ties or zeros this is the exact permutation distribution given the observed ranks, the
#    p-value scipy's `method="auto"` gets from an exhaustive permutation test (2**n evaluations:
#    about 0.5 s at 12 pairs and 1 s at 13, which made summaries slow); without ties it is
#    scipy's `method="exact"`.
#  - n > EXACT_MAX_PAIRS: the normal approximation with the tie correction of the variance and no
#    continuity correction (scipy's `method="asymptotic"`), as scipy's "auto" does above 50.
EXACT_MAX_PAIRS = 50  # 2**50 sign patterns still count exactly in int64


def _doubled_midranks(magnitudes: np.ndarray) -> np.ndarray:
    """2 x the rank of each value (1 = smallest; tied values share their average rank), as int64."""
    order = np.argsort(magnitudes, kind="stable")
    ordered = magnitudes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    doubled = np.empty(ordered.size, dtype=np.int64)
    doubled[order] = np.repeat(starts + 1 + ends, ends - starts)  # ranks start+1..end, averaged, x2
    return doubled


def _signed_rank_counts(doubled_ranks: np.ndarray) -> np.ndarray:
    """counts[s]: how many of the 2**n sign patterns give positive (doubled) ranks summing to s."""
    counts = np.zeros(int(doubled_ranks.sum()) + 1, dtype=np.int64)
    counts[0] = 1
    for rank in doubled_ranks.tolist():  # each rank >= 2
        counts[rank:] = counts[rank:] + counts[:-rank]  # the right side is built before it is stored
    return counts


def wilcoxon_signed_rank(differences: np.ndarray) -> tuple[float, str] | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, and the method: "exact" or
    "normal" (see the comment above); None with fewer than 2 non-zero differences."""
    nonzero = differences[differences != 0]
    if nonzero.size < 2:
        return None
    if nonzero.size > EXACT_MAX_PAIRS:
        from scipy.stats import wilcoxon  # scipy.stats takes a second to import: load it on first use

        return float(wilcoxon(differences, method="asymptotic").pvalue), "normal"
    ranks = _doubled_midranks(np.abs(nonzero))
    counts = _signed_rank_counts(ranks)
    observed = int(ranks[nonzero > 0].sum())
    total = float(2**nonzero.size)
    at_most, at_least = counts[: observed + 1].sum() / total, counts[observed:].sum() / total
    return min(1.0, 2.0 * min(float(at_most), float(at_least))), "exact"


def compare(
    table: TrialTable,
    variant: int,
    baseline: int,
    success_rates: tuple[float | None, float | None],
    n_boot: int,
    seed: int,
) -> Comparison:
    """Paired comparison of variant number `variant` with number `baseline`.

    `success_rates` are the (variant, baseline) overall success rates. Each comparison draws from
    its own `default_rng(seed)`, so adding a variant leaves the other comparisons unchanged.
    """
    base_rows = _rows_by_key(table, baseline)
    pairs = [(v, base_rows[key]) for key, v in _rows_by_key(table, variant).items() if key in base_rows]
    paired = np.array(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2): variant row, baseline row
    v_rows, b_rows = paired[:, 0], paired[:, 1]
    both_ran = table.ran[v_rows] & table.ran[b_rows]
    v_div, b_div = table.diverged[v_rows], table.diverged[b_rows]
    # positive = variant better, in either direction of the metric
    diff = table.goodness_sign * (table.value[v_rows] - table.value[b_rows])
    counted = both_ran & ~np.isnan(diff)
    diff, lrs = diff[counted], table.lr[v_rows][counted]
    score = (diff > 0) + 0.5 * (diff == 0)  # a win counts 1, a tie 1/2

    mean_ci: tuple[float | None, float | None] = (None, None)
    win_ci = mean_ci
    strata = _strata(lrs)
    if any(rows.size >= 2 for rows in strata):  # otherwise every resample equals the sample
        boot = stratified_bootstrap_means(
            np.column_stack([diff, score]), strata, n_boot, np.random.default_rng(seed)
        )
        mean_ci, win_ci = percentile_interval(boot[:, 0]), percentile_interval(boot[:, 1])
    v_rate, b_rate = success_rates
    wilcoxon = wilcoxon_signed_rank(diff)
    return Comparison(
        variant=table.variants[variant],
        baseline=table.variants[baseline],
        n_pairs=int(diff.size),
        pairs_excluded=int(both_ran.sum() - diff.size),
        only_variant_diverged=int((both_ran & v_div & ~b_div).sum()),
        only_baseline_diverged=int((both_ran & b_div & ~v_div).sum()),
        mean_difference=float(diff.mean()) if diff.size else None,
        mean_difference_ci_low=mean_ci[0],
        mean_difference_ci_high=mean_ci[1],
        prob_improvement=float(score.mean()) if diff.size else None,
        prob_improvement_ci_low=win_ci[0],
        prob_improvement_ci_high=win_ci[1],
        wilcoxon_p=None if wilcoxon is None else wilcoxon[0],
        wilcoxon_method=None if wilcoxon is None else wilcoxon[1],
        success_rate_difference=None if v_rate is None or b_rate is None else v_rate - b_rate,
    )

"""A variant against the baseline, paired on (lr, seed).

Which pairs count: every (lr, seed) both variants ran. A diverged run is the worst possible outcome,
not a missing one: in a pair where one side diverged the other side wins, and where both did it is
a tie. The mean difference needs two values, so it is over the pairs where neither diverged; the
win probability, the rank test and the paired success difference are over all pairs.

Intervals are built for the few seeds studies have (simulated coverage: benchmarks/bench_coverage.py):
- mean difference: a t-interval over the pairs' differences, mean +- t(0.975, n-1) s / sqrt(n),
  pooling the learning rates: s includes the spread between learning rates, so the interval is
  wider where the lrs' effects differ (and uses n-1 degrees of freedom, not n minus the number of
  lrs). A percentile bootstrap stratified by lr (what this replaced) covered 73% at 3 lrs x 2
  seeds: it has no small-sample correction and lrs with a single pair add no spread to it.
- P(variant better): the Wilson score interval of wins (ties count half) out of the pairs.
With fewer than two pairs there is no interval, and the summary's caveats say so.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from studies.robustness._outcome import TrialTable
from studies.robustness._schema import Comparison, LRDifference, PairDifference
from studies.robustness._wilson import wilson_interval

CONFIDENCE = 0.95
# Differences are compared on a grid of 1e-9 of the largest |difference| before ranking, so values
# that differ only by floating-point rounding are ties rather than arbitrarily ordered.
RANK_PRECISION = 1e-9

# Wilcoxon signed-rank test on all pairs: zero differences are dropped (Wilcoxon's convention), the
# n non-zero ones ranked by |difference| (ties share their average rank; a pair with one diverged
# side ranks above every finite difference, signed against the side that diverged).
#  - n <= EXACT_MAX_PAIRS: exact. Under the null each sign is + or - with probability 1/2; the
#    distribution of the sum of positive ranks is counted over all 2**n sign patterns by dynamic
#    programming over the (doubled, hence integer) ranks: under a millisecond at n = 50. With ties
#    or zeros this is the exact permutation distribution given the observed ranks. The smallest
#    two-sided p it can give is 2 / 2**n (all signs alike), reported as `wilcoxon_min_p`.
#  - n > EXACT_MAX_PAIRS: the normal approximation with the tie-corrected variance, no continuity
#    correction (scipy's method="asymptotic"), written out so that no comparison imports scipy.
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


def rank_scores(differences: np.ndarray, variant_lost: np.ndarray, variant_won: np.ndarray) -> np.ndarray:
    """Integer scores whose signs and magnitudes the rank test uses: finite differences on the
    RANK_PRECISION grid, and pairs decided by a divergence above all of them (+ won, - lost);
    pairs where both diverged score 0. `differences` is NaN where a side diverged."""
    finite = ~(variant_lost | variant_won) & ~np.isnan(differences)
    scores = np.zeros(differences.size, dtype=np.int64)
    largest = float(np.max(np.abs(differences[finite]))) if finite.any() else 0.0
    if largest > 0:
        scores[finite] = np.rint(differences[finite] / (largest * RANK_PRECISION)).astype(np.int64)
    beyond = round(1 / RANK_PRECISION) + 1  # above any rounded finite |difference|
    scores[variant_won] = beyond
    scores[variant_lost] = -beyond
    return scores


def wilcoxon_signed_rank(scores: np.ndarray) -> tuple[float, Literal["exact", "normal"], float] | None:
    """Two-sided Wilcoxon signed-rank p-value of integer pair scores, the method ("exact" or
    "normal"), and the smallest p the method could give with these ranks; None with fewer than 2
    non-zero scores."""
    nonzero = scores[scores != 0]
    n = nonzero.size
    if n < 2:
        return None
    ranks = _doubled_midranks(np.abs(nonzero))
    observed = int(ranks[nonzero > 0].sum())  # doubled sum of positive ranks
    if n > EXACT_MAX_PAIRS:
        _, tie_sizes = np.unique(np.abs(nonzero), return_counts=True)
        mean = n * (n + 1) / 4
        variance = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(tie_sizes**3 - tie_sizes)) / 48
        z = abs(observed / 2 - mean) / math.sqrt(variance)
        extreme = (n * (n + 1) / 2 - mean) / math.sqrt(variance)
        return min(1.0, math.erfc(z / math.sqrt(2))), "normal", math.erfc(extreme / math.sqrt(2))
    counts = _signed_rank_counts(ranks)
    total = float(2**n)
    at_most, at_least = counts[: observed + 1].sum() / total, counts[observed:].sum() / total
    return min(1.0, 2.0 * min(float(at_most), float(at_least))), "exact", min(1.0, 2.0 / total)


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """mean +- t(1 - alpha/2, n-1) * s / sqrt(n); (None, None) with fewer than 2 values."""
    n = values.size
    if n < 2:
        return None, None
    from scipy.special import stdtrit  # Student t quantile; scipy.special loads quickly

    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * float(np.std(values, ddof=1)) / math.sqrt(n)
    mean = float(values.mean())
    return mean - half, mean + half


def _rows_by_key(table: TrialTable, code: int) -> dict[tuple[float, int], int]:
    return {(lr, int(table.seed[i])): int(i) for lr, rows in table.by_lr[code] for i in rows}


def compare(table: TrialTable, variant: int, baseline: int) -> Comparison:
    """Paired comparison of variant number `variant` with number `baseline` (see the module doc)."""
    base_rows = _rows_by_key(table, baseline)
    pairs = [(v, base_rows[key]) for key, v in _rows_by_key(table, variant).items() if key in base_rows]
    paired = np.array(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2): variant row, baseline row
    both_ran = table.ran[paired[:, 0]] & table.ran[paired[:, 1]]
    v_rows, b_rows = paired[both_ran, 0], paired[both_ran, 1]
    # a side that reported no metric without diverging leaves its pair out of every statistic
    missing = (np.isnan(table.value[v_rows]) & ~table.diverged[v_rows]) | (
        np.isnan(table.value[b_rows]) & ~table.diverged[b_rows]
    )
    excluded = int(missing.sum())
    v_rows, b_rows = v_rows[~missing], b_rows[~missing]
    v_div, b_div = table.diverged[v_rows], table.diverged[b_rows]
    lost, won = v_div & ~b_div, b_div & ~v_div
    # positive = variant better, in either direction of the metric; NaN where a side diverged
    diff = table.goodness_sign * (table.value[v_rows] - table.value[b_rows])
    score = np.where(
        won, 1.0, np.where(lost, 0.0, np.where(v_div & b_div, 0.5, (diff > 0) + 0.5 * (diff == 0)))
    )
    n_pairs = int(v_rows.size)

    values = diff[~np.isnan(diff)]
    mean_ci = t_interval(values)
    win_ci: tuple[float | None, float | None] = (None, None)
    if n_pairs >= 2:
        win_ci = wilson_interval(float(score.sum()), n_pairs, CONFIDENCE)
    test = wilcoxon_signed_rank(rank_scores(diff, lost, won))
    v_success, b_success = table.success[v_rows], table.success[b_rows]
    return Comparison(
        variant=table.variants[variant],
        baseline=table.variants[baseline],
        n_pairs=n_pairs,
        n_value_pairs=int(values.size),
        pairs_with_divergence=int((v_div | b_div).sum()),
        pairs_excluded=excluded,
        only_variant_diverged=int(lost.sum()),
        only_baseline_diverged=int(won.sum()),
        both_diverged=int((v_div & b_div).sum()),
        mean_difference=float(values.mean()) if values.size else None,
        mean_difference_ci_low=mean_ci[0],
        mean_difference_ci_high=mean_ci[1],
        prob_improvement=float(score.mean()) if n_pairs else None,
        prob_improvement_ci_low=win_ci[0],
        prob_improvement_ci_high=win_ci[1],
        wilcoxon_p=None if test is None else test[0],
        wilcoxon_method=None if test is None else test[1],
        wilcoxon_min_p=None if test is None else test[2],
        wilcoxon_p_holm=None,  # set over all comparisons by `holm`
        success_rate_difference=float(np.mean(v_success.astype(float) - b_success)) if n_pairs else None,
        by_lr=_by_lr(table.lr[v_rows], table.seed[v_rows], diff, v_div, b_div),
    )


Side = Literal["variant", "baseline", "both"]


def _diverged_side(variant: bool, baseline: bool) -> Side | None:
    if variant and baseline:
        return "both"
    return "variant" if variant else "baseline" if baseline else None


def _by_lr(
    lr: np.ndarray, seed: np.ndarray, diff: np.ndarray, v_div: np.ndarray, b_div: np.ndarray
) -> list[LRDifference]:
    """The pairs (in (lr, seed) order, as `compare` builds them) grouped by learning rate, each
    group with the mean difference of its value pairs and its t-interval."""
    sides = [_diverged_side(bool(v), bool(b)) for v, b in zip(v_div, b_div, strict=True)]
    groups = []
    for value in np.unique(lr):
        at = np.flatnonzero(lr == value)
        values = diff[at][~np.isnan(diff[at])]
        low, high = t_interval(values)
        pairs = [
            PairDifference(
                seed=int(seed[i]), difference=None if np.isnan(diff[i]) else float(diff[i]), diverged=sides[i]
            )
            for i in at
        ]
        groups.append(
            LRDifference(
                lr=float(value),
                n_pairs=len(pairs),
                n_value_pairs=int(values.size),
                only_variant_diverged=sum(p.diverged == "variant" for p in pairs),
                only_baseline_diverged=sum(p.diverged == "baseline" for p in pairs),
                both_diverged=sum(p.diverged == "both" for p in pairs),
                mean_difference=float(values.mean()) if values.size else None,
                mean_difference_ci_low=low,
                mean_difference_ci_high=high,
                pairs=pairs,
            )
        )
    return groups


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of one family (None: no test, left out)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted

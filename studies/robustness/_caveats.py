"""What a summary's numbers cannot support at the study's size, said in words."""

from __future__ import annotations

from collections.abc import Sequence

from studies.robustness._schema import Comparison, VariantSummary
from studies.robustness._wilson import wilson_interval

MAX_SEEDS_SEARCHED = 10_000
# a t-interval from this many pairs or fewer (1 or 2 degrees of freedom) is too unstable to read
FEW_PAIRS_PER_LR = 3


def seeds_for_confident_robustness(level: float) -> int | None:
    """The fewest seeds n at which n successes of n have a Wilson 95% lower bound >= `level`."""
    for n in range(1, MAX_SEEDS_SEARCHED + 1):
        if wilson_interval(n, n)[0] >= level:
            return n
    return None  # a lower bound below 1 never reaches a level of 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def caveats(
    variants: Sequence[VariantSummary],
    comparisons: Sequence[Comparison],
    robust_level: float,
    seeds_needed: int | None,
) -> list[str]:
    seeds = [s.seeds_run for v in variants for s in v.lrs if s.seeds_run]
    said: list[str] = []
    if seeds:
        most = max(seeds)
        per_lr = f"{_count(most, 'seed')} per learning rate"
        per_lr = per_lr if min(seeds) == most else "at most " + per_lr
        if seeds_needed is None:
            said.append(f"{per_lr}: a success rate of {robust_level:g} can never be claimed with confidence.")
        elif most < seeds_needed:
            said.append(
                f"{per_lr}: robustness at a success rate of {robust_level:g} cannot be claimed with "
                f"confidence with fewer than {seeds_needed} seeds; robust ranges are point estimates."
            )
    for c in comparisons:
        who = f"{c.variant} vs {c.baseline}"
        if c.n_pairs and c.n_pairs < 10:
            said.append(f"{who}: {_count(c.n_pairs, 'pair')}, so the intervals are wide.")
        few = [d.lr for d in c.by_lr if 2 <= d.n_value_pairs <= FEW_PAIRS_PER_LR]
        if few and len(few) == sum(1 for d in c.by_lr if d.n_value_pairs >= 2):
            said.append(
                f"{who}: 2 to {FEW_PAIRS_PER_LR} pairs per learning rate: the interval of the difference at "
                "each learning rate (a t-interval on 1 or 2 degrees of freedom) is unreliable; one seed "
                "moves it, so read it as a rough range, not as evidence."
            )
        elif few:
            where = ", ".join(f"{lr:.3g}" for lr in few)
            said.append(
                f"{who}: 2 to {FEW_PAIRS_PER_LR} pairs at learning rate {where}: the interval of the "
                "difference there is unreliable."
            )
        if c.n_value_pairs < 2:
            said.append(
                f"{who}: fewer than 2 pairs where neither diverged: no interval for the mean difference."
            )
        if c.wilcoxon_p is None:
            said.append(f"{who}: fewer than 2 non-zero paired differences: no rank test.")
        elif c.wilcoxon_min_p is not None and c.wilcoxon_min_p > 0.05:
            said.append(
                f"{who}: with these pairs the rank test cannot give a p-value below {c.wilcoxon_min_p:.3g}, "
                "so no difference can be significant at 0.05."
            )
        if c.pairs_with_divergence:
            said.append(
                f"{who}: {c.pairs_with_divergence} of {_count(c.n_pairs, 'pair')} involve a divergence, "
                "counted as a loss for the side that diverged (a tie where both did) in P(better), the rank "
                "test and the success difference; the mean difference leaves them out."
            )
    if len(comparisons) > 1:
        said.append(
            f"{len(comparisons)} variants are compared with the baseline: read the Holm-adjusted p-values "
            "(wilcoxon_p_holm)."
        )
    return said

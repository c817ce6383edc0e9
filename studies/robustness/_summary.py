"""`summarize`: from a study's trial rows to its robustness summary."""

from __future__ import annotations

import math
from collections.abc import Sequence

from studies.robustness._caveats import caveats, seeds_for_confident_robustness
from studies.robustness._outcome import TrialOutcome, read_trials
from studies.robustness._paired import compare, holm
from studies.robustness._schema import RobustnessSummary
from studies.robustness._transfer import transfer_stats
from studies.robustness._variant import variant_summary


def summarize(
    outcomes: Sequence[TrialOutcome],
    metric: str,
    threshold: float,
    higher_is_better: bool,
    baseline: str | None = None,
    robust_level: float = 0.8,
) -> RobustnessSummary:
    """Robustness summary of a (possibly partial) study; deterministic (no resampling).

    `baseline` defaults to the first variant in `outcomes`. A diverged run is the worst outcome: a
    failure in every success rate, the worst seed of its learning rate, its lr's worst value in the
    expected best, and a loss in its pair; metric statistics (mean, median, std) are over the runs
    that did not diverge. Failed trials are left out of everything but the counts (the full rule:
    `studies.robustness._outcome`). Raises ValueError on an empty or inconsistent grid (duplicate
    cells, a variant with two p_detach values) or bad parameters.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not 0.0 < robust_level <= 1.0:
        raise ValueError(f"robust_level must be in (0, 1], got {robust_level}")
    table = read_trials(outcomes, threshold, higher_is_better)
    baseline = table.variants[0] if baseline is None else baseline
    if baseline not in table.variants:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(table.variants)}")
    base = table.variants.index(baseline)

    variants = [variant_summary(table, code, robust_level) for code in range(len(table.variants))]
    comparisons = [compare(table, code, base) for code in range(len(table.variants)) if code != base]
    adjusted = holm([c.wilcoxon_p for c in comparisons])
    comparisons = [
        c.model_copy(update={"wilcoxon_p_holm": p}) for c, p in zip(comparisons, adjusted, strict=True)
    ]
    seeds_needed = seeds_for_confident_robustness(robust_level)
    counts = table.state_counts
    pending = counts["queued"] + counts["running"]
    return RobustnessSummary(
        metric=metric,
        threshold=threshold,
        higher_is_better=higher_is_better,
        baseline=baseline,
        robust_level=robust_level,
        cells_total=len(outcomes),
        done=counts["done"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        pending=pending,
        complete=pending == 0,
        variants=variants,
        comparisons=comparisons,
        seeds_for_confident_robustness=seeds_needed,
        caveats=caveats(variants, comparisons, robust_level, seeds_needed),
        transfer=transfer_stats(outcomes),
        data=sorted({t.data for t in outcomes if t.state == "done" and t.data}),
    )

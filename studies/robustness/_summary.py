"""`summarize`: from a study's trial rows to its robustness summary."""

from __future__ import annotations

import math
from collections.abc import Sequence

from studies.robustness._outcome import TrialOutcome, read_trials
from studies.robustness._paired import compare
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
    n_boot: int = 2000,
    seed: int = 0,
) -> RobustnessSummary:
    """Robustness summary of a (possibly partial) study, reproducible for a given `seed`.

    `baseline` defaults to the first variant in `outcomes`. Diverged runs count as failures in
    success rates and are left out of metric statistics and pairs; failed trials are left out of
    everything but the counts (the full rule: `studies.robustness._outcome`). Raises ValueError on
    an empty or inconsistent grid (duplicate cells, a variant with two p_detach values) or bad
    parameters.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not 0.0 < robust_level <= 1.0:
        raise ValueError(f"robust_level must be in (0, 1], got {robust_level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    table = read_trials(outcomes, threshold, higher_is_better)
    baseline = table.variants[0] if baseline is None else baseline
    if baseline not in table.variants:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(table.variants)}")
    base = table.variants.index(baseline)

    variants = [variant_summary(table, code, robust_level) for code in range(len(table.variants))]
    comparisons = [
        compare(
            table,
            code,
            base,
            (variants[code].success_rate, variants[base].success_rate),
            n_boot,
            seed,
        )
        for code in range(len(table.variants))
        if code != base
    ]
    counts = table.state_counts
    pending = counts["queued"] + counts["running"]
    return RobustnessSummary(
        metric=metric,
        threshold=threshold,
        higher_is_better=higher_is_better,
        baseline=baseline,
        robust_level=robust_level,
        n_boot=n_boot,
        seed=seed,
        cells_total=len(outcomes),
        done=counts["done"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        pending=pending,
        complete=pending == 0,
        variants=variants,
        comparisons=comparisons,
        transfer=transfer_stats(outcomes),
        data=sorted({t.data for t in outcomes if t.state == "done" and t.data}),
    )

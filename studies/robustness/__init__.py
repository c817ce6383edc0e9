"""Robustness summary of a study: how each variant's training holds up across learning rates and seeds.

`summarize` turns a study's trial rows (`TrialOutcome`) into a `RobustnessSummary`: per variant and
learning rate, metric statistics and success rates (Wilson intervals); per variant, the best lr, the
robust lr range, the success AUC and the expected best metric for k random lrs (Dodge et al. 2019);
per non-baseline variant, a comparison paired on (lr, seed) with stratified bootstrap intervals and
a Wilcoxon test.

Diverged runs count as runs and as failures in every success rate, but have no metric value: metric
statistics and paired comparisons are over runs that did not diverge. Failed trials only appear in
the counts. Pure numpy/scipy: no torch.
"""

from studies.robustness._curves import expected_max
from studies.robustness._outcome import TrialOutcome, TrialState
from studies.robustness._schema import (
    Comparison,
    LRStats,
    RobustnessSummary,
    SeedSpread,
    SeedValue,
    TransferStats,
    VariantSummary,
)
from studies.robustness._summary import summarize
from studies.robustness._wilson import wilson_interval

__all__ = [
    "Comparison",
    "LRStats",
    "RobustnessSummary",
    "SeedSpread",
    "SeedValue",
    "TransferStats",
    "TrialOutcome",
    "TrialState",
    "VariantSummary",
    "expected_max",
    "summarize",
    "wilson_interval",
]

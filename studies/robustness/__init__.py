"""Robustness summary of a study: how each variant's training holds up across learning rates and seeds.

`summarize` turns a study's trial rows (`TrialOutcome`) into a `RobustnessSummary`: per variant and
learning rate, metric statistics (t-intervals of the mean) and success rates (Wilson intervals);
per variant, the best lr, the robust lr ranges (on the point estimate and with confidence), the
success AUC and the expected best metric for k random lrs (Dodge et al. 2019); per non-baseline
variant, a comparison paired on (lr, seed) with a t-interval of the mean difference, a Wilson
interval of P(better), a Wilcoxon test (Holm-adjusted over several variants); and `caveats`, what
the numbers cannot support at the study's size.

A diverged run is the worst outcome, not a missing one: a failure in every success rate, the worst
seed of its lr, and a loss in its pair; it has no value in means and the mean difference (the rule,
once: `studies.robustness._outcome`). Failed trials only appear in the counts. Pure numpy/scipy:
no torch.
"""

from studies.robustness._caveats import FEW_PAIRS_PER_LR
from studies.robustness._curves import expected_max
from studies.robustness._outcome import TrialOutcome, TrialState, TrialTable, read_trials
from studies.robustness._schema import (
    Comparison,
    LRDifference,
    LRStats,
    PairDifference,
    RobustnessSummary,
    SeedSpread,
    SeedValue,
    TransferStats,
    VariantSummary,
)
from studies.robustness._summary import summarize
from studies.robustness._wilson import wilson_interval

__all__ = [
    "FEW_PAIRS_PER_LR",
    "Comparison",
    "LRDifference",
    "LRStats",
    "PairDifference",
    "RobustnessSummary",
    "SeedSpread",
    "SeedValue",
    "TransferStats",
    "TrialOutcome",
    "TrialState",
    "TrialTable",
    "VariantSummary",
    "expected_max",
    "read_trials",
    "summarize",
    "wilson_interval",
]

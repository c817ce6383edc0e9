"""Transfer copying: per variant, learning rate and delay, how the trials' models do at other delays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from studies.robustness._outcome import TrialOutcome
from studies.robustness._schema import TransferStats


def transfer_stats(outcomes: Sequence[TrialOutcome]) -> list[TransferStats]:
    """Statistics of the finite transfer accuracies of finished runs, in variant order of first
    appearance, then by learning rate and delay."""
    groups: dict[tuple[str, float, int], list[float]] = {}
    order: dict[str, int] = {}
    for trial in outcomes:
        order.setdefault(trial.variant, len(order))
        if trial.state != "done" or trial.diverged:
            continue
        for T, metrics in trial.transfer.items():
            value = metrics.get("accuracy", math.nan)
            if math.isfinite(value):
                groups.setdefault((trial.variant, trial.lr, int(T)), []).append(value)
    return [
        TransferStats(
            variant=variant,
            lr=lr,
            T=T,
            runs=len(values),
            mean=float(np.mean(values)),
            median=float(np.median(values)),
            min=min(values),
            max=max(values),
        )
        for (variant, lr, T), values in sorted(
            groups.items(), key=lambda item: (order[item[0][0]], *item[0][1:])
        )
    ]

"""The trial rows a summary reads, and their reading as columns: who ran, who diverged, what counts.

The rule for unusual trials, applied here once for every statistic downstream:

- a trial *ran* when its state is "done";
- a run *diverged* when its `diverged` flag is set or its metric is NaN, infinite or beyond
  MAX_METRIC in magnitude (numerically blown up: its statistics would overflow); it counts in the
  runs and in `diverged`, as a failure in every success rate, and has no metric value, so it is
  left out of the metric statistics (mean, median, std, min/max); as the worst possible outcome it
  is its learning rate's worst seed, enters the expected best at the study's worst value, and
  loses its pair (a tie if both sides diverged);
- a run with no metric (None) that did not diverge counts as a run and a failure, and is left out
  of every metric statistic and of the paired comparisons (`pairs_excluded`);
- a *success* is a run whose metric is at least as good as the threshold (>= when higher is
  better, <= otherwise);
- trials in state "failed" are counted as failed and left out of everything else; "cancelled",
  "queued" and "running" trials count only towards completeness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

TrialState = Literal["done", "failed", "cancelled", "queued", "running"]
MAX_METRIC = 1e150  # a larger |metric| is a blown-up run (sums of such values would overflow)


class TrialOutcome(BaseModel):
    """One cell of a study grid (variant x learning rate x seed) and how it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: str = Field(min_length=1, description="variant name, e.g. 'vanilla' or 'h-detach'")
    p_detach: float = Field(ge=0.0, le=1.0, description="the variant's detach probability")
    lr: float = Field(gt=0.0, allow_inf_nan=False, description="learning rate")
    seed: int = Field(description="training seed")
    state: TrialState = Field(description="job state of the trial")
    metric: float | None = Field(
        None,
        description="test value of the success metric, of the model the study's selection names; None if "
        "unavailable, NaN/inf if it blew up",
    )
    diverged: bool = Field(False, description="training diverged (loss became NaN/inf)")
    steps_to_threshold: int | None = Field(
        None, ge=0, description="optimizer steps until the metric first reached the threshold"
    )
    transfer: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="copying with transfer_T: test metrics at each other delay (key) of the model `metric` "
        "comes from",
    )
    data: str | None = Field(None, description="the task and data the trial ran on, in words")


@dataclass(frozen=True)
class TrialTable:
    """The trials as columns (one row per trial), plus the row indices of each (variant, lr) cell."""

    variants: tuple[str, ...]  # in order of first appearance
    p_detach: tuple[float, ...]  # per variant
    state_counts: Counter[str]
    goodness_sign: float  # +1 when higher is better, -1 otherwise: sign * metric grows with quality
    lr: np.ndarray  # (N,)
    seed: np.ndarray  # (N,)
    ran: np.ndarray  # (N,) bool: state done
    failed: np.ndarray  # (N,) bool: state failed
    diverged: np.ndarray  # (N,) bool: ran and diverged (flag or non-finite metric)
    value: np.ndarray  # (N,) metric of runs that count in statistics, NaN otherwise
    success: np.ndarray  # (N,) bool
    steps: np.ndarray  # (N,) steps to threshold, NaN when unknown
    by_lr: tuple[tuple[tuple[float, np.ndarray], ...], ...]  # per variant: (lr, rows sorted by seed)


def read_trials(outcomes: Sequence[TrialOutcome], threshold: float, higher_is_better: bool) -> TrialTable:
    """Columns of `outcomes` under the module's rule; raises ValueError on an inconsistent grid."""
    if not outcomes:
        raise ValueError("no trials to summarise")
    codes: dict[str, int] = {}
    p_detach: list[float] = []
    n = len(outcomes)
    variant = np.empty(n, dtype=np.int64)
    lr = np.empty(n)
    seed = np.empty(n, dtype=np.int64)
    metric = np.full(n, np.nan)
    has_metric = np.zeros(n, dtype=bool)
    flagged = np.zeros(n, dtype=bool)
    steps = np.full(n, np.nan)
    states: list[str] = []
    for i, trial in enumerate(outcomes):
        code = codes.setdefault(trial.variant, len(codes))
        if code == len(p_detach):
            p_detach.append(trial.p_detach)
        elif p_detach[code] != trial.p_detach:
            raise ValueError(f"variant {trial.variant!r} appears with two p_detach values")
        variant[i], lr[i], seed[i] = code, trial.lr, trial.seed
        if trial.metric is not None:
            metric[i], has_metric[i] = trial.metric, True
        if trial.steps_to_threshold is not None:
            steps[i] = trial.steps_to_threshold
        flagged[i] = trial.diverged
        states.append(trial.state)

    state = np.asarray(states)
    ran = state == "done"
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(metric) & (np.abs(metric) <= MAX_METRIC)
    diverged = ran & (flagged | (has_metric & ~finite))
    value = np.where(ran & ~diverged & finite, metric, np.nan)
    sign = 1.0 if higher_is_better else -1.0
    with np.errstate(invalid="ignore"):
        success = sign * value >= sign * threshold  # NaN compares False
    return TrialTable(
        variants=tuple(codes),
        p_detach=tuple(p_detach),
        state_counts=Counter(states),
        goodness_sign=sign,
        lr=lr,
        seed=seed,
        ran=ran,
        failed=state == "failed",
        diverged=diverged,
        value=value,
        success=success,
        steps=steps,
        by_lr=_cells(variant, lr, seed, len(codes), tuple(codes)),
    )


def _cells(
    variant: np.ndarray, lr: np.ndarray, seed: np.ndarray, n_variants: int, names: tuple[str, ...]
) -> tuple[tuple[tuple[float, np.ndarray], ...], ...]:
    order = np.lexsort((seed, lr, variant))
    v, l, s = variant[order], lr[order], seed[order]
    same_cell = (v[1:] == v[:-1]) & (l[1:] == l[:-1])
    duplicate = same_cell & (s[1:] == s[:-1])
    if duplicate.any():
        j = int(np.argmax(duplicate))
        raise ValueError(f"duplicate trial: variant {names[v[j]]!r}, lr {l[j]}, seed {s[j]}")
    starts = np.flatnonzero(np.concatenate(([True], ~same_cell)))
    per_variant: list[list[tuple[float, np.ndarray]]] = [[] for _ in range(n_variants)]
    for rows in np.split(order, starts[1:]):
        per_variant[int(variant[rows[0]])].append((float(lr[rows[0]]), rows))
    return tuple(tuple(cells) for cells in per_variant)

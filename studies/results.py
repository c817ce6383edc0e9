"""A study's results read back from its jobs: one row per grid cell, learning curves, summary input."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from studies.db.models import Job, Study
from studies.exceptions import Conflict
from studies.robustness import RobustnessSummary, TrialOutcome, summarize
from studies.spec import StudySpec


class TrialRow(TrialOutcome):
    """One grid cell as the service shows it: how it ended (the TrialOutcome the robustness summary
    reads), and its cell index, attempts, both models' test metrics, errors and timing."""

    cell: int
    attempts: int
    selection: Literal["best_val", "final"] = Field(
        "final", description="the model `metric` comes from (the spec's selection)"
    )
    metric_from: str = Field(
        "final", description='what `metric` is: "final" or "test at best validation (step s)"'
    )
    final: dict[str, float] = Field(default_factory=dict, description="test metrics of the final model")
    best_val: dict[str, float] = Field(
        default_factory=dict, description="test metrics of the model with the best validation value"
    )
    best_val_step: int | None = Field(None, description="the step that model comes from")
    diverged_at: int | None = None
    error: str | None = None
    device: str | None = None
    wall_time_s: float | None = None


class CurvePoint(BaseModel):
    step: int
    values: dict[str, float] = Field(description="train_loss and val_* metrics at this step")


def job_result(job: Job) -> dict[str, Any]:
    return json.loads(job.result_json) if job.result_json else {}


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def metric_label(selection: str, best_val_step: int | None) -> str:
    """What a row's metric is, in words."""
    if selection == "final":
        return "final"
    if best_val_step is None:
        return "test at best validation (none recorded)"
    return f"test at best validation (step {best_val_step})"


def _finite_nested(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {key: _finite(inner) for key, inner in values.items() if isinstance(inner, dict)}


def trial_row(job: Job, metric: str, selection: Literal["best_val", "final"] = "final") -> TrialRow:
    """A job's row; its `metric` is the final model's test value or, with selection "best_val", the
    test value of the model with the best validation value (none if no evaluation chose one)."""
    result = job_result(job)
    final = _finite(result.get("final", {}))
    best_val = _finite(result.get("best_val", {}))
    best_val_step = result.get("best_val_step")
    chosen = final if selection == "final" else best_val
    transfer = result.get("transfer" if selection == "final" else "best_val_transfer", {})
    return TrialRow(
        cell=job.cell_index,
        variant=job.variant,
        p_detach=job.p_detach,
        lr=job.lr,
        seed=job.seed,
        state=job.state,
        attempts=job.attempts,
        metric=chosen.get(metric),
        selection=selection,
        metric_from=metric_label(selection, best_val_step),
        final=final,
        best_val=best_val,
        best_val_step=best_val_step,
        transfer=_finite_nested(transfer),
        data=result.get("data") or None,
        steps_to_threshold=result.get("steps_to_threshold"),
        diverged=result.get("status") == "diverged",
        diverged_at=result.get("diverged_at"),
        error=job.last_error,
        device=result.get("device"),
        wall_time_s=result.get("wall_time_s"),
    )


def curve_points(result: dict[str, Any]) -> list[CurvePoint]:
    """The learning curve a finished job recorded (evaluation points, in order)."""
    return [
        CurvePoint(step=int(p["step"]), values=_finite({k: v for k, v in p.items() if k != "step"}))
        for p in result.get("curve", [])
    ]


Cell = str | int | float | bool | None
# the columns every flat row starts with, in this order; metric columns follow, then these
_LEADING = ("cell", "variant", "p_detach", "lr", "seed", "state", "attempts", "selection", "metric",
            "metric_from", "diverged", "diverged_at", "steps_to_threshold", "best_val_step")  # fmt: skip
_TRAILING = ("wall_time_s", "device", "data", "error")


def flat_trial_rows(rows: Sequence[TrialRow]) -> list[dict[str, Cell]]:
    """A study's trial rows as one flat record per grid cell, sorted by cell, for tables and CSV.

    Every record has the same keys: the cell (variant, p_detach, lr, seed), its state and attempts,
    `metric` (the test value of the model the study's selection names) and how it ended; then each
    model's test metrics as flat columns, `final_<metric>` and `best_val_<metric>`, and transfer
    copying as `transfer_T<delay>_<metric>`; then timing, device, data and error. A value a cell
    does not have is None (an empty CSV field).
    """
    flat = []
    for row in sorted(rows, key=lambda r: r.cell):
        record: dict[str, Cell] = {name: getattr(row, name) for name in _LEADING}
        record |= {f"final_{k}": v for k, v in row.final.items()}
        record |= {f"best_val_{k}": v for k, v in row.best_val.items()}
        record |= {f"transfer_T{T}_{k}": v for T, metrics in row.transfer.items() for k, v in metrics.items()}
        flat.append(record | {name: getattr(row, name) for name in _TRAILING})
    metrics = sorted({key for record in flat for key in record} - {*_LEADING, *_TRAILING}, key=_metric_order)
    columns = [*_LEADING, *metrics, *_TRAILING]
    return [{column: record.get(column) for column in columns} for record in flat]


def _metric_order(column: str) -> tuple[int, int, str]:
    """final_* first, then best_val_*, then transfer by delay (numerically), each by metric name."""
    if column.startswith("transfer_T"):
        delay, _, metric = column.removeprefix("transfer_T").partition("_")
        return 2, int(delay) if delay.isdigit() else 0, metric
    return (0 if column.startswith("final_") else 1), 0, column


def to_csv(records: Sequence[Mapping[str, object]]) -> str:
    """Records (dicts with the same keys, e.g. `flat_trial_rows`) as CSV text with a header line;
    None is an empty field, floats keep every digit (repr)."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for record in records for key in record))
    writer = csv.DictWriter(buffer, fieldnames=columns)  # RFC 4180: lines end in CRLF
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def stored_spec(study: Study) -> StudySpec:
    """The spec a study was stored with; Conflict if this version refuses it."""
    try:
        return StudySpec.model_validate_json(study.spec_json)
    except ValidationError as error:
        # stored before the spec refused what nothing downstream can use (a NaN threshold stored
        # as null, a seed past 32 bits on SQLite): its results cannot be read, say so plainly
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Conflict(
            f"study {study.id} was stored with a spec this version refuses ({where}: {first['msg']});"
            " delete it and submit it again"
        ) from None


def study_summary(spec: StudySpec, rows: Sequence[TrialRow], robust_level: float = 0.8) -> RobustnessSummary:
    """The robustness summary of a study's cells as they stand (complete or partial)."""
    return summarize(
        rows,
        metric=spec.success.metric,
        threshold=spec.success.threshold,
        higher_is_better=spec.success.higher_is_better,
        baseline=spec.baseline_variant,
        robust_level=robust_level,
    )

"""Optuna's storage as the study's logbook, so `optuna-dashboard` shows every study.

One robustness study is one Optuna study (in the same database as our own tables); every attempt
at a grid cell is one Optuna trial with params variant, p_detach, lr and seed, the validation
metric as intermediate values, and the outcome as user attributes. A cell's recorded result is
the single trial with user attribute ``recorded`` set: a completed trial, or a FAIL trial whose
``outcome`` is "diverged". Attempts that did not record (a killed worker, a release) are FAIL
trials without it. Optuna's pruners are never consulted: in a robustness grid a bad cell is data.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event

from studies.db.engine import normalise_url
from studies.spec import GridCell, StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage on the same database as ours."""
    url = normalise_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if not url.startswith("sqlite"):
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    # Our engine has put the file in WAL mode; there synchronous=NORMAL skips the fsync at every
    # commit (Optuna commits each attribute on its own) and still never corrupts the file.
    event.listen(storage.engine, "connect", _sqlite_optuna_pragmas)
    storage.engine.dispose()  # connections opened during set-up predate the listener
    return storage


def _sqlite_optuna_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def direction(spec: StudySpec) -> optuna.study.StudyDirection:
    maximize = spec.success.metric == "accuracy"
    return optuna.study.StudyDirection.MAXIMIZE if maximize else optuna.study.StudyDirection.MINIMIZE


def create_optuna_study(storage: RDBStorage, name: str, spec: StudySpec, study_id: int) -> int:
    """Register a study (idempotent: an existing study of that name is reused)."""
    try:
        optuna_id = storage.create_new_study([direction(spec)], name)
    except optuna.exceptions.DuplicatedStudyError:
        return storage.get_study_id_from_name(name)
    storage.set_study_user_attr(optuna_id, "hdetach_study_id", study_id)
    storage.set_study_user_attr(optuna_id, "grid_size", spec.grid_size)
    storage.set_study_user_attr(optuna_id, "task", spec.task.model_dump(exclude_none=True))
    return optuna_id


def _distributions(spec: StudySpec) -> dict[str, CategoricalDistribution]:
    return {
        "variant": CategoricalDistribution([v.name for v in spec.variants]),
        "p_detach": CategoricalDistribution(sorted({v.p_detach for v in spec.variants})),
        "lr": CategoricalDistribution(spec.lr_values()),
        "seed": CategoricalDistribution(list(spec.seeds)),
    }


def start_trial(
    storage: RDBStorage, study_name: str, spec: StudySpec, cell: GridCell, attrs: dict[str, Any]
) -> int:
    """A new RUNNING trial for one attempt at `cell`; returns its trial id.

    Params and attributes go in with the trial, in one transaction (a template trial), not one
    transaction each."""
    distributions = _distributions(spec)
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params={name: getattr(cell, name) for name in distributions},
        distributions=dict(distributions),
        user_attrs={"cell": cell.index, **attrs},
    )
    return storage.create_new_trial(storage.get_study_id_from_name(study_name), template_trial=template)


def report(storage: RDBStorage, trial_id: int, step: int, value: float) -> None:
    if math.isfinite(value):
        storage.set_trial_intermediate_value(trial_id, step, value)


def record_result(storage: RDBStorage, trial_id: int, metric: str, result: dict[str, Any]) -> None:
    """Close the trial that recorded the cell's result."""
    for key in ("status", "diverged_at", "steps_to_threshold", "steps_run", "wall_time_s", "final", "device"):
        if key in result:
            storage.set_trial_user_attr(trial_id, key, result[key])
    storage.set_trial_user_attr(trial_id, "recorded", True)
    value = result.get("final", {}).get(metric)
    if result.get("status") == "diverged" or value is None or not math.isfinite(value):
        storage.set_trial_user_attr(
            trial_id, "outcome", "diverged" if result.get("status") == "diverged" else "no value"
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    else:
        storage.set_trial_user_attr(trial_id, "outcome", result.get("status", "completed"))
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])


def abandon_trial(storage: RDBStorage, trial_id: int, outcome: str) -> None:
    """Close an attempt that recorded nothing (killed, released, cancelled, or reported too late)."""
    try:
        storage.set_trial_user_attr(trial_id, "outcome", outcome)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:  # already finished (e.g. by the reaper): nothing to do
        pass

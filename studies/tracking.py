"""Optuna's storage as the study's logbook, so `optuna-dashboard` shows every study.

One robustness study is one Optuna study (in the same database as our own tables), its objective
named after the spec's metric; every attempt at a grid cell is one Optuna trial with params
variant, p_detach and lr (log scale), the validation metric as intermediate values, and the seed
and the outcome as flat user attributes (numbers and strings). A cell's recorded result is
the single trial with user attribute ``recorded`` set: a completed trial, or a FAIL trial whose
``outcome`` is "diverged". Attempts that did not record (a killed worker, a release) are FAIL
trials without it. Optuna's pruners are never consulted: in a robustness grid a bad cell is data.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event

from studies import optuna_rows
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
    maximize = spec.success.higher_is_better
    return optuna.study.StudyDirection.MAXIMIZE if maximize else optuna.study.StudyDirection.MINIMIZE


# where `Study.set_metric_names` keeps the objectives' names, and optuna-dashboard reads them (its
# `SYSTEM_ATTR_METRIC_NAMES`); written through the storage, since `set_metric_names` is still
# experimental (a warning per call) and needs a loaded Study
METRIC_NAMES_ATTR = "study:metric_names"


def objective_name(spec: StudySpec) -> str:
    """What a trial's value is: the test metric of the model the spec's selection names."""
    name = f"test_{spec.success.metric}"
    return name if spec.selection == "final" else f"{name} at best validation"


def create_optuna_study(storage: RDBStorage, name: str, spec: StudySpec, study_id: int) -> int:
    """Register a study (idempotent: an existing study of that name is reused)."""
    try:
        optuna_id = storage.create_new_study([direction(spec)], name)
    except optuna.exceptions.DuplicatedStudyError:
        return storage.get_study_id_from_name(name)
    storage.set_study_system_attr(optuna_id, METRIC_NAMES_ATTR, [objective_name(spec)])
    storage.set_study_user_attr(optuna_id, "hdetach_study_id", study_id)
    storage.set_study_user_attr(optuna_id, "grid_size", spec.grid_size)
    storage.set_study_user_attr(optuna_id, "task", spec.task.model_dump(exclude_none=True))
    return optuna_id


def _distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The hyperparameters, as the dashboard should plot them. The seed is not one: it is the
    repetition a robustness study averages over, so it is a user attribute (as a param, the
    dashboard's importance panel ranked it next to the learning rate)."""
    lrs = spec.lr_values()  # all > 0 (the spec's rule), as a log scale needs
    return {
        "variant": CategoricalDistribution([v.name for v in spec.variants]),
        # p's whole domain, so that every study's plots share one axis
        "p_detach": FloatDistribution(0.0, 1.0),
        "lr": FloatDistribution(min(lrs), max(lrs), log=True),
    }


def _new_trial(spec: StudySpec, cell: GridCell, attrs: Mapping[str, Any]) -> optuna_rows.NewTrial:
    distributions = _distributions(spec)
    return optuna_rows.NewTrial(
        params={name: getattr(cell, name) for name in distributions},
        distributions=distributions,
        user_attrs={"cell": cell.index, "seed": cell.seed, **attrs},
    )


def start_trials(
    storage: RDBStorage,
    study_name: str,
    spec: StudySpec,
    starts: Sequence[tuple[GridCell, Mapping[str, Any]]],
    study_id: int | None = None,
) -> list[int]:
    """A new RUNNING trial for each (cell, attrs) attempt, in one transaction; their trial ids.

    Given our `study_id`, a missing Optuna study is created first (it normally is at submission)."""
    trials = [_new_trial(spec, cell, attrs) for cell, attrs in starts]
    if optuna_rows.supported(storage):
        try:
            return optuna_rows.start_trials(storage, study_name, trials)
        except KeyError:
            if study_id is None:
                raise
            create_optuna_study(storage, study_name, spec, study_id)
            return optuna_rows.start_trials(storage, study_name, trials)
    if study_id is not None:
        create_optuna_study(storage, study_name, spec, study_id)  # idempotent
    optuna_id = storage.get_study_id_from_name(study_name)
    # Optuna's API: one transaction per trial (a template trial carries its params and attrs)
    return [
        storage.create_new_trial(
            optuna_id,
            template_trial=optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=dict(t.params),
                distributions=dict(t.distributions),
                user_attrs=dict(t.user_attrs),
            ),
        )
        for t in trials
    ]


def running_trials_with(storage: RDBStorage, keys: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """RUNNING trials, of any study, that have the user attr `keys[0]`, each with those of `keys`
    it has: (trial id, attrs)."""
    if optuna_rows.supported(storage):
        return optuna_rows.running_trials_with(storage, keys)
    found = []
    for study in storage.get_all_studies():
        for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if keys[0] in trial.user_attrs:
                found.append(
                    (trial._trial_id, {k: trial.user_attrs[k] for k in keys if k in trial.user_attrs})
                )
    return sorted(found)


def report_values(storage: RDBStorage, values: Iterable[tuple[int, int, float]]) -> None:
    """(trial id, step, value) learning-curve points; non-finite values and ended trials are skipped."""
    finite = [(trial_id, step, value) for trial_id, step, value in values if math.isfinite(value)]
    if optuna_rows.supported(storage):
        optuna_rows.add_intermediate_values(storage, finite)
        return
    for trial_id, step, value in finite:
        with contextlib.suppress(RuntimeError):  # the trial already ended (e.g. reaped)
            storage.set_trial_intermediate_value(trial_id, step, value)


_OUTCOME_SCALARS = (
    "status", "diverged_at", "steps_to_threshold", "steps_run", "wall_time_s", "best_val_step", "data",
    "device",
)  # fmt: skip


def outcome_attrs(result: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's result as flat user attributes, each a number or a string, so the dashboard lists,
    filters and sorts them: test metrics as ``final_accuracy``, ``best_val_mse``, transfer ones as
    ``transfer_T200_accuracy``, ``best_val_transfer_T200_accuracy``. A missing value (None, or no
    data description) is left out rather than shown as null."""
    attrs = {key: result[key] for key in _OUTCOME_SCALARS if result.get(key) not in (None, "")}
    for model in ("final", "best_val"):
        for metric, value in (result.get(model) or {}).items():
            attrs[f"{model}_{metric}"] = value
    for key in ("transfer", "best_val_transfer"):
        for T, metrics in (result.get(key) or {}).items():
            for metric, value in metrics.items():
                attrs[f"{key}_T{T}_{metric}"] = value
    return attrs


def result_closing(
    trial_id: int, metric: str, result: Mapping[str, Any], selection: str = "final"
) -> optuna_rows.Closing:
    """How the trial that recorded a cell's result ends: COMPLETE with the metric of the model the
    spec's selection names (the final one, or the best-validation one: "best_val"), or FAIL
    (diverged, or no finite value), with the outcome as user attrs."""
    attrs = outcome_attrs(result) | {"recorded": True}
    value = (result.get("best_val" if selection == "best_val" else "final") or {}).get(metric)
    if result.get("status") == "diverged" or value is None or not math.isfinite(value):
        attrs["outcome"] = "diverged" if result.get("status") == "diverged" else "no value"
        return optuna_rows.Closing(trial_id, TrialState.FAIL, None, attrs)
    attrs["outcome"] = result.get("status", "completed")
    return optuna_rows.Closing(trial_id, TrialState.COMPLETE, float(value), attrs)


def abandon_closing(trial_id: int, outcome: str) -> optuna_rows.Closing:
    """An attempt that recorded nothing (killed, released, cancelled, or reported too late)."""
    return optuna_rows.Closing(trial_id, TrialState.FAIL, None, {"outcome": outcome})


def close_trials(storage: RDBStorage, closings: Sequence[optuna_rows.Closing]) -> list[bool]:
    """End trials (one transaction where supported); False for one that had already ended."""
    if optuna_rows.supported(storage):
        return optuna_rows.close_trials(storage, closings)
    closed = []
    for closing in closings:
        try:
            for key, value in closing.user_attrs.items():
                storage.set_trial_user_attr(closing.trial_id, key, value)
            values = None if closing.value is None else [closing.value]
            storage.set_trial_state_values(closing.trial_id, closing.state, values)
        except RuntimeError:  # already finished (e.g. by the reaper)
            closed.append(False)
        else:
            closed.append(True)
    return closed


def intermediate_values(storage: RDBStorage, trial_id: int) -> list[tuple[int, float]]:
    """The (step, value) points a running trial has reported so far, in step order."""
    return sorted(storage.get_trial(trial_id).intermediate_values.items())

"""Batched writes to Optuna's RDB tables: a pack's trials start, report and close in one transaction.

Optuna's `RDBStorage` commits every parameter, attribute and intermediate value in a transaction
of its own, through its ORM: about 20 ms per trial on SQLite each time a pack starts and again
when it ends, most of what a worker spends outside training. The statements here write the same
rows `RDBStorage` writes, for the one schema they were checked against (`SCHEMA_VERSION`, Optuna
5); `supported()` says whether a storage has it, and `studies.tracking` takes Optuna's public API
otherwise. The tests read everything written here back through Optuna's own API.

What RDBStorage does and these statements do too: a new trial's number is the count of the
study's earlier trials, counted under the study's row lock (PostgreSQL) or SQLite's write lock;
datetimes are naive UTC; only a RUNNING trial takes values, attributes or a final state. What they
skip: the check that a parameter's distribution matches the study's earlier trials (ours all come
from one spec).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import Connection, Table, bindparam, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from studies.db.engine import autocommit_engine, retrying

SCHEMA_VERSION = "v3.2.0.a"  # Optuna 5.0's alembic head

_STUDIES: Table = models.StudyModel.__table__
_TRIALS: Table = models.TrialModel.__table__
_PARAMS: Table = models.TrialParamModel.__table__
_USER_ATTRS: Table = models.TrialUserAttributeModel.__table__
_VALUES: Table = models.TrialValueModel.__table__
_INTERMEDIATE: Table = models.TrialIntermediateValueModel.__table__
_FINITE_VALUE = models.TrialValueModel.TrialValueType.FINITE
_FINITE_INTERMEDIATE = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE

_support: weakref.WeakKeyDictionary[RDBStorage, bool] = weakref.WeakKeyDictionary()


def supported(storage: RDBStorage) -> bool:
    """Whether `storage` has the schema these statements write (asked once per storage)."""
    if storage not in _support:
        _support[storage] = (
            optuna.__version__.split(".")[0] == "5"  # 5.0 started storing datetimes as naive UTC
            and storage.engine.dialect.name in ("sqlite", "postgresql")
            and storage.get_current_version() == SCHEMA_VERSION
        )
    return _support[storage]


def disable(storage: RDBStorage) -> None:
    """Make `studies.tracking` write this storage through Optuna's API (the tests compare the two)."""
    _support[storage] = False


@dataclass(frozen=True)
class NewTrial:
    params: Mapping[str, Any]  # external values, each with its distribution below
    distributions: Mapping[str, BaseDistribution]
    user_attrs: Mapping[str, Any]


@dataclass(frozen=True)
class Closing:
    """How a RUNNING trial ends: its state, its objective value (COMPLETE only), attributes to set."""

    trial_id: int
    state: TrialState
    value: float | None = None
    user_attrs: Mapping[str, Any] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _insert(connection: Connection, table: Table) -> Any:
    return (postgresql if connection.dialect.name == "postgresql" else sqlite).insert(table)


def _upsert(connection: Connection, table: Table, keys: Sequence[str], value_column: str) -> Any:
    statement = _insert(connection, table)
    return statement.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={value_column: getattr(statement.excluded, value_column)},
    )


def _attr_rows(trial_id: int, attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()
    ]


def start_trials(storage: RDBStorage, study_name: str, trials: Sequence[NewTrial]) -> list[int]:
    """Create RUNNING trials with their params and user attrs in one transaction; their ids in order.

    Raises KeyError if there is no study of that name."""
    if not trials:
        return []
    now = _utc_now()
    # A connection the server dropped is retried on a fresh one. Should a commit have gone
    # through unacknowledged, the retry's trials are duplicates with no job pointing at them,
    # which the reaper's sweep (workers.attempts.sweep_optuna_trials) closes as abandoned.
    return retrying(3, storage.engine.begin, lambda connection: _start(connection, study_name, trials, now))


def _start(connection: Connection, study_name: str, trials: Sequence[NewTrial], now: datetime) -> list[int]:
    # PostgreSQL: numbers are counted, so one creator at a time (the study row's lock, as Optuna)
    by_name = select(_STUDIES.c.study_id).where(_STUDIES.c.study_name == study_name)
    if connection.dialect.name == "postgresql":
        by_name = by_name.with_for_update()
    study_id = connection.execute(by_name).scalar()
    if study_id is None:
        raise KeyError(f"no Optuna study named {study_name!r}")
    # SQLite: this INSERT begins the transaction (its driver opens none for a SELECT), so the
    # write lock is held before anything is counted.
    created = connection.execute(
        _TRIALS.insert().returning(_TRIALS.c.trial_id, sort_by_parameter_order=True),
        [
            {"study_id": study_id, "number": None, "state": TrialState.RUNNING, "datetime_start": now}
            for _ in trials
        ],
    )
    trial_ids = list(created.scalars())
    earlier = _TRIALS.alias("earlier")
    count_earlier = (
        select(func.count())
        .where(earlier.c.study_id == _TRIALS.c.study_id, earlier.c.trial_id < _TRIALS.c.trial_id)
        .scalar_subquery()
    )
    connection.execute(update(_TRIALS).where(_TRIALS.c.trial_id.in_(trial_ids)).values(number=count_earlier))
    params, attrs = [], []
    for trial_id, trial in zip(trial_ids, trials, strict=True):
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            params.append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": distribution.to_internal_repr(value),
                    "distribution_json": distribution_to_json(distribution),
                }
            )
        attrs += _attr_rows(trial_id, trial.user_attrs)
    if params:
        connection.execute(_PARAMS.insert(), params)
    if attrs:
        connection.execute(_USER_ATTRS.insert(), attrs)
    return trial_ids


# INSERT ... SELECT: a row goes in only while its trial is RUNNING, checked in the same statement
_RUNNING_TRIAL = select(
    bindparam("trial_id", type_=_INTERMEDIATE.c.trial_id.type),
    bindparam("step", type_=_INTERMEDIATE.c.step.type),
    bindparam("value", type_=_INTERMEDIATE.c.intermediate_value.type),
    literal(_FINITE_INTERMEDIATE, type_=_INTERMEDIATE.c.intermediate_value_type.type),
).where(_TRIALS.c.trial_id == bindparam("trial_id"), _TRIALS.c.state == TrialState.RUNNING)


def add_intermediate_values(storage: RDBStorage, values: Iterable[tuple[int, int, float]]) -> None:
    """(trial id, step, finite value) rows in one transaction; a trial no longer RUNNING takes none."""
    rows = [{"trial_id": t, "step": s, "value": v} for t, s, v in values]
    if not rows:
        return
    # one statement, atomic alone: on PostgreSQL it needs no BEGIN and COMMIT round trips
    engine = storage.engine
    if engine.dialect.name == "postgresql":
        engine = autocommit_engine(engine)

    def write(connection: Connection) -> None:
        columns = ["trial_id", "step", "intermediate_value", "intermediate_value_type"]
        statement = _insert(connection, _INTERMEDIATE).from_select(columns, _RUNNING_TRIAL)
        statement = statement.on_conflict_do_update(
            index_elements=[_INTERMEDIATE.c.trial_id, _INTERMEDIATE.c.step],
            set_={"intermediate_value": statement.excluded.intermediate_value},
        )
        connection.execute(statement, rows)

    retrying(3, engine.begin, write)  # an upsert: safe to run again on a fresh connection


def close_trials(storage: RDBStorage, closings: Sequence[Closing]) -> list[bool]:
    """End trials in one transaction; False for one that was no longer RUNNING (left as it was)."""
    if not closings:
        return []
    if unfinished := [c.state for c in closings if not c.state.is_finished()]:
        raise ValueError(f"{unfinished[0]} is not a final state")
    now = _utc_now()
    # safe to run again on a fresh connection: only RUNNING trials are closed
    return retrying(3, storage.engine.begin, lambda connection: _close(connection, closings, now))


def _close(connection: Connection, closings: Sequence[Closing], now: datetime) -> list[bool]:
    closed = []
    for closing in closings:
        ended = connection.execute(
            update(_TRIALS)
            .where(_TRIALS.c.trial_id == closing.trial_id, _TRIALS.c.state == TrialState.RUNNING)
            .values(state=closing.state, datetime_complete=now)
        )
        closed.append(ended.rowcount == 1)
    ended_ones = [c for c, ok in zip(closings, closed, strict=True) if ok]
    attrs = [row for c in ended_ones for row in _attr_rows(c.trial_id, c.user_attrs)]
    if attrs:
        connection.execute(_upsert(connection, _USER_ATTRS, ["trial_id", "key"], "value_json"), attrs)
    values = [
        {"trial_id": c.trial_id, "objective": 0, "value": c.value, "value_type": _FINITE_VALUE}
        for c in ended_ones
        if c.value is not None
    ]
    if values:
        connection.execute(_VALUES.insert(), values)
    return closed


def running_trials_with(storage: RDBStorage, keys: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """RUNNING trials that have the user attr `keys[0]`, each with those of `keys` it has."""
    statement = (
        select(_USER_ATTRS.c.trial_id, _USER_ATTRS.c.key, _USER_ATTRS.c.value_json)
        .join(_TRIALS, _TRIALS.c.trial_id == _USER_ATTRS.c.trial_id)
        .where(_TRIALS.c.state == TrialState.RUNNING, _USER_ATTRS.c.key.in_(list(keys)))
    )
    found: dict[int, dict[str, Any]] = {}
    with storage.engine.connect() as connection:
        for trial_id, key, value_json in connection.execute(statement):
            found.setdefault(trial_id, {})[key] = json.loads(value_json)
    return sorted((trial_id, attrs) for trial_id, attrs in found.items() if keys[0] in attrs)

"""Claiming work: up to `max_jobs` queued jobs that share one pack key, in one short transaction.

Order: highest priority first; among equal priorities the study with the fewest running jobs
(fair share between studies), then the oldest job. A pack comes from one study, whose jobs all
share one pack key. PostgreSQL: rows are taken with FOR UPDATE SKIP LOCKED, so
concurrent claimers pass each other by. SQLite: the transaction starts with BEGIN IMMEDIATE, so
claims run one at a time (see studies.db.engine).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    String,
    Update,
    bindparam,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_autocommit
from studies.db.models import ExecutorKind, JobState, StudyStatus, UTCDateTime
from studies.queue._common import JOBS, STUDIES, resolve_now
from studies.queue._types import ClaimedJob


@cache
def _claim_order(by_engine: bool, by_study: bool) -> Select[Any]:
    """Studies that may have queued jobs: highest priority first, then fewest running jobs, then oldest.

    Filtered by `:b_engine` and/or `:b_only_study` when asked. Ordering the few active studies
    (instead of every queued job) keeps a claim cheap however long the queue is; each count uses
    the (study_id, state, id) index. Statements are built once: building them costs more client
    CPU than running them.
    """
    running = (
        select(func.count())
        .where(JOBS.c.study_id == STUDIES.c.id, JOBS.c.state == JobState.RUNNING)
        .correlate(STUDIES)
        .scalar_subquery()
    )
    statement = (
        select(STUDIES.c.id)
        .where(
            STUDIES.c.status.in_([StudyStatus.QUEUED, StudyStatus.RUNNING]),
            STUDIES.c.cancel_requested.is_(False),
        )
        .order_by(STUDIES.c.priority.desc(), running, STUDIES.c.id)
    )
    if by_engine:
        statement = statement.where(STUDIES.c.engine == bindparam("b_engine"))
    if by_study:
        statement = statement.where(STUDIES.c.id == bindparam("b_only_study"))
    return statement


@cache
def _first_study(by_engine: bool, by_study: bool) -> Any:
    """The first study in claim order that has a queued job, as a scalar subquery."""
    other = JOBS.alias("queued_job")
    has_queued = (
        exists().where(other.c.study_id == STUDIES.c.id, other.c.state == JobState.QUEUED).correlate(STUDIES)
    )
    return _claim_order(by_engine, by_study).where(has_queued).limit(1).scalar_subquery()


def _new_token(dialect: str) -> Any:
    """A fresh 32-hex-digit lease token per row, made by the database inside the UPDATE."""
    if dialect == "postgresql":
        return func.replace(func.gen_random_uuid().cast(String), "-", "")
    return func.lower(func.hex(func.randomblob(16)))


@cache
def _take_queued(dialect: str, first_of: tuple[bool, bool] | None = None) -> Update:
    """Lease a study's oldest queued jobs in one UPDATE ... RETURNING.

    The study is `:b_study`, or with `first_of` (the claim-order filters) the first study in
    claim order that has queued jobs, so the usual claim is a single statement.
    PostgreSQL: the rows are picked FOR UPDATE SKIP LOCKED, so concurrent claimers pass each other
    by. SQLite: the whole claim runs under BEGIN IMMEDIATE's write lock.
    """
    study = bindparam("b_study") if first_of is None else _first_study(*first_of)
    # bind names must differ from column names in an UPDATE
    pick = select(JOBS.c.id).where(JOBS.c.study_id == study, JOBS.c.state == JobState.QUEUED)
    # A MATERIALIZED CTE runs the pick exactly once. As a plain IN (subquery), PostgreSQL leased
    # more rows than the LIMIT (tests/studies/test_queue.py caught it).
    picked = (
        pick.order_by(JOBS.c.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(JOBS)
        .where(JOBS.c.id.in_(select(picked.c.id)), JOBS.c.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            worker_id=bindparam("b_worker"),
            attempts=JOBS.c.attempts + 1,
            lease_token=_new_token(dialect),
            lease_expires_at=bindparam("b_expires", type_=UTCDateTime),
            started_at=bindparam("b_now", type_=UTCDateTime),
            optuna_trial_id=None,
        )
        .returning(
            JOBS.c.id,
            JOBS.c.study_id,
            JOBS.c.cell_index,
            JOBS.c.variant,
            JOBS.c.p_detach,
            JOBS.c.lr,
            JOBS.c.seed,
            JOBS.c.lease_token,
            JOBS.c.attempts,
            JOBS.c.pack_key,
        )
    )


_STUDY_INFO = select(STUDIES.c.id, STUDIES.c.status, STUDIES.c.spec_json, STUDIES.c.optuna_study_name).where(
    STUDIES.c.id.in_(bindparam("ids", expanding=True))
)
_START_STUDIES = (
    update(STUDIES)
    .where(STUDIES.c.id.in_(bindparam("ids", expanding=True)), STUDIES.c.status == StudyStatus.QUEUED)
    .values(status=StudyStatus.RUNNING, updated_at=bindparam("b_now", type_=UTCDateTime))
)


class _StudyInfo(NamedTuple):
    spec_json: str
    optuna_study_name: str


# What claims learn about a study and need not ask again: its spec and Optuna name never change,
# and once running it never goes back to queued. Per engine (= per database), filled after commit,
# and only on PostgreSQL, whose sequences never hand out an id twice (SQLite reuses the highest id
# after a delete; there the question costs no round trip anyway).
_known_running: WeakKeyDictionary[Engine, dict[int, _StudyInfo]] = WeakKeyDictionary()


def _studies_of(connection: Connection, ids: set[int], now: datetime) -> dict[int, _StudyInfo]:
    """Spec and Optuna name of each study; marks queued ones as running."""
    known = _known_running.get(connection.engine, {})
    info = {sid: known[sid] for sid in ids if sid in known}
    if missing := sorted(ids - set(info)):
        rows = connection.execute(_STUDY_INFO, {"ids": missing}).all()
        info |= {row.id: _StudyInfo(row.spec_json, row.optuna_study_name) for row in rows}
        if starting := [row.id for row in rows if row.status == StudyStatus.QUEUED]:
            connection.execute(_START_STUDIES, {"ids": starting, "b_now": now})
    return info


def claim(
    factory: sessionmaker[Session],
    worker_id: str,
    max_jobs: int,
    lease_seconds: float,
    now: datetime | None = None,
    engine: ExecutorKind | None = ExecutorKind.QUEUE,
    study_id: int | None = None,
) -> list[ClaimedJob]:
    """Lease up to `max_jobs` jobs of one pack to `worker_id`; [] when nothing is queued.

    Queue workers claim from studies whose engine is the queue; a Ray driver passes
    `engine=ExecutorKind.RAY`, or `engine=None` with the `study_id` it was asked to run.
    A pack holds jobs of one study only, so each result is recorded under its own study's
    bookkeeping (two studies with equal shapes once shared a pack, and their Optuna trials went to
    the first study). The usual claim is one statement: the first study in claim order with a
    queued job; later studies are asked only when every queued job of that one was locked by other
    claimers.
    """
    if max_jobs < 1:
        raise ValueError("max_jobs must be at least 1")
    now = resolve_now(now)
    expires = now + timedelta(seconds=lease_seconds)
    filters = (engine is not None, study_id is not None)
    params = {"b_worker": worker_id, "b_expires": expires, "b_now": now}
    params |= {k: v for k, v in {"b_engine": engine, "b_only_study": study_id}.items() if v is not None}

    def work(connection: Connection) -> tuple[list[Row[Any]], dict[int, _StudyInfo]]:
        dialect = connection.dialect.name
        rows = list(connection.execute(_take_queued(dialect, filters), {**params, "limit": max_jobs}))
        if not rows:  # every queued job of the first study was locked by other claimers: try the next
            for candidate in connection.scalars(_claim_order(*filters), params):
                rows = list(
                    connection.execute(
                        _take_queued(dialect), {**params, "b_study": candidate, "limit": max_jobs}
                    )
                )
                if rows:
                    break
        if not rows:
            return [], {}
        return rows, _studies_of(connection, {rows[0].study_id}, now)

    # Each statement of a claim is safe alone (PostgreSQL runs them in autocommit): leased rows
    # that never reach this worker, should it die in between, come back through the reaper.
    rows, studies = run_autocommit(factory, work)
    if studies and factory.kw["bind"].dialect.name == "postgresql":
        _known_running.setdefault(factory.kw["bind"], {}).update(studies)
    return [
        ClaimedJob(
            job_id=row.id,
            study_id=row.study_id,
            cell_index=row.cell_index,
            variant=row.variant,
            p_detach=row.p_detach,
            lr=row.lr,
            seed=row.seed,
            lease_token=row.lease_token,
            lease_expires_at=expires,
            attempt=row.attempts,
            pack_key=row.pack_key,
            spec_json=studies[row.study_id].spec_json,
            optuna_study_name=studies[row.study_id].optuna_study_name,
        )
        for row in sorted(rows, key=lambda row: row.id)
    ]

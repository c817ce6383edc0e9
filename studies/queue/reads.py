"""Read-only views of studies and jobs (rows come back detached, safe to read after the session)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import session_scope
from studies.db.models import ExecutorKind, Job, JobState, Study, StudyStatus, Worker
from studies.exceptions import NotFound
from studies.queue._common import state_counts


def _require_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"no study {study_id}")
    return study


def get_study(factory: sessionmaker[Session], study_id: int) -> Study:
    with session_scope(factory, readonly=True) as session:
        return _require_study(session, study_id)


def job_counts(factory: sessionmaker[Session], study_id: int) -> dict[str, int]:
    """Jobs per state, every state present (zeros included)."""
    with session_scope(factory, readonly=True) as session:
        _require_study(session, study_id)
        return state_counts(session, study_id)


def list_jobs(
    factory: sessionmaker[Session], study_id: int, offset: int = 0, limit: int | None = None
) -> Sequence[Job]:
    """The study's jobs in cell order; `offset` and `limit` take a page of them."""
    statement = select(Job).where(Job.study_id == study_id).order_by(Job.cell_index).offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    with session_scope(factory, readonly=True) as session:
        _require_study(session, study_id)
        return session.scalars(statement).all()


def get_job(factory: sessionmaker[Session], job_id: int) -> Job:
    with session_scope(factory, readonly=True) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job


def list_studies(
    factory: sessionmaker[Session], status: StudyStatus | str | None = None, offset: int = 0, limit: int = 50
) -> Sequence[Study]:
    """Newest first."""
    statement = select(Study).order_by(Study.id.desc()).offset(offset).limit(limit)
    if status is not None:
        statement = statement.where(Study.status == StudyStatus(status))
    with session_scope(factory, readonly=True) as session:
        return session.scalars(statement).all()


def count_studies(factory: sessionmaker[Session], status: StudyStatus | str | None = None) -> int:
    """How many studies `list_studies` pages through."""
    statement = select(func.count()).select_from(Study)
    if status is not None:
        statement = statement.where(Study.status == StudyStatus(status))
    with session_scope(factory, readonly=True) as session:
        return session.scalar(statement) or 0


def unfinished_jobs(factory: sessionmaker[Session], engine: ExecutorKind | None = None) -> int:
    """Jobs still queued or running (a running one may yet come back to the queue), of studies run
    by `engine` (any, if None)."""
    statement = (
        select(func.count())
        .select_from(Job)
        .join(Study, Study.id == Job.study_id)
        .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
    )
    if engine is not None:
        statement = statement.where(Study.engine == engine)
    with session_scope(factory, readonly=True) as session:
        return int(session.scalar(statement) or 0)


class JobOutcome(NamedTuple):
    """What the Optuna sweep needs to know of a job: where it stands and what it recorded."""

    job_id: int
    state: str
    lease_token: str | None
    optuna_trial_id: int | None
    result_json: str | None
    spec_json: str


def job_outcomes(factory: sessionmaker[Session], job_ids: Iterable[int]) -> dict[int, JobOutcome]:
    """Those of `job_ids` that still exist (a deleted study's jobs are gone), by id."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    statement = (
        select(Job.id, Job.state, Job.lease_token, Job.optuna_trial_id, Job.result_json, Study.spec_json)
        .join(Study, Study.id == Job.study_id)
        .where(Job.id.in_(ids))
    )
    with session_scope(factory, readonly=True) as session:
        return {row[0]: JobOutcome(*row) for row in session.execute(statement)}


def running_jobs_by_worker(factory: sessionmaker[Session]) -> dict[str, list[int]]:
    """The ids of the jobs each worker is training now, by worker id."""
    statement = select(Job.worker_id, Job.id).where(Job.state == JobState.RUNNING).order_by(Job.id)
    jobs: dict[str, list[int]] = {}
    with session_scope(factory, readonly=True) as session:
        for worker_id, job_id in session.execute(statement):
            if worker_id is not None:
                jobs.setdefault(worker_id, []).append(job_id)
    return jobs


class QueueSnapshot(NamedTuple):
    """The whole queue at one moment, for monitoring."""

    job_counts: dict[str, int]  # jobs per state, across studies (states with none left out)
    trial_seconds: list[float]  # the recorded training wall time of each done job that has one
    workers: list[tuple[str, str, datetime, str]]  # (id, device, last heartbeat, status)


def queue_snapshot(factory: sessionmaker[Session]) -> QueueSnapshot:
    """Job counts, recorded trial times and workers, read in one transaction."""
    with session_scope(factory, readonly=True) as session:
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        results = session.scalars(select(Job.result_json).where(Job.state == JobState.DONE)).all()
        workers = session.execute(
            select(Worker.id, Worker.device, Worker.last_heartbeat, Worker.status)
        ).all()
    seconds = [json.loads(text).get("wall_time_s") for text in results if text]
    return QueueSnapshot(
        job_counts={str(state): int(n) for state, n in counts.items()},
        trial_seconds=[float(t) for t in seconds if isinstance(t, int | float)],
        workers=[tuple(w) for w in workers],  # type: ignore[misc]
    )

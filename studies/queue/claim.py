"""Claiming work: up to `max_jobs` queued jobs that share one pack key, in one short transaction.

Order: highest priority first; among equal priorities the study with the fewest running jobs
(fair share between studies), then the oldest job. A pack comes from one study, whose jobs all
share one pack key. PostgreSQL: rows are taken with FOR UPDATE SKIP LOCKED, so
concurrent claimers pass each other by. SQLite: the transaction starts with BEGIN IMMEDIATE, so
claims run one at a time (see studies.db.engine).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction
from studies.db.models import Engine, Job, JobState, Study, StudyStatus
from studies.queue._common import resolve_now
from studies.queue._types import ClaimedJob


def _studies_in_claim_order(session: Session, engine: Engine | None, study_id: int | None) -> list[int]:
    """Studies that may have queued jobs: highest priority first, then fewest running jobs, then oldest.

    Only studies run by `engine` (any, if None), or only `study_id` if given.

    Ordering the few active studies (instead of every queued job) keeps a claim cheap however
    long the queue is; each count uses the (study_id, state) index.
    """
    running = (
        select(func.count())
        .where(Job.study_id == Study.id, Job.state == JobState.RUNNING)
        .correlate(Study)
        .scalar_subquery()
    )
    statement = (
        select(Study.id)
        .where(Study.status.in_([StudyStatus.QUEUED, StudyStatus.RUNNING]), Study.cancel_requested.is_(False))
        .order_by(Study.priority.desc(), running, Study.id)
    )
    if engine is not None:
        statement = statement.where(Study.engine == engine)
    if study_id is not None:
        statement = statement.where(Study.id == study_id)
    return list(session.scalars(statement))


def _queued_jobs(study_id: int, limit: int, pack_key: str | None) -> Select[Any]:
    """A study's oldest queued jobs (of one pack key, if given), locked; rows another claimer
    holds are skipped (PostgreSQL)."""
    statement = select(Job).where(Job.study_id == study_id, Job.state == JobState.QUEUED)
    if pack_key is not None:
        statement = statement.where(Job.pack_key == pack_key)
    return statement.order_by(Job.id).limit(limit).with_for_update(skip_locked=True)


def claim(
    factory: sessionmaker[Session],
    worker_id: str,
    max_jobs: int,
    lease_seconds: float,
    now: datetime | None = None,
    engine: Engine | None = Engine.QUEUE,
    study_id: int | None = None,
) -> list[ClaimedJob]:
    """Lease up to `max_jobs` jobs of one pack to `worker_id`; [] when nothing is queued.

    Queue workers claim from studies whose engine is the queue; a Ray driver passes
    `engine=Engine.RAY`, or `engine=None` with the `study_id` it was asked to run.

    The first study in claim order with a queued job fixes the pack key; the pack is filled from
    that study, then from the next studies in the same order whose jobs share the key.
    """
    if max_jobs < 1:
        raise ValueError("max_jobs must be at least 1")
    now = resolve_now(now)
    expires = now + timedelta(seconds=lease_seconds)

    def work(session: Session) -> list[ClaimedJob]:
        jobs: list[Job] = []
        pack_key: str | None = None
        for candidate in _studies_in_claim_order(session, engine, study_id):
            jobs.extend(session.scalars(_queued_jobs(candidate, max_jobs - len(jobs), pack_key)))
            if jobs:
                pack_key = jobs[0].pack_key
            if len(jobs) == max_jobs:
                break
        if not jobs:
            return []
        for job in jobs:
            job.state = JobState.RUNNING
            job.worker_id = worker_id
            job.attempts += 1
            job.lease_token = uuid4().hex
            job.lease_expires_at = expires
            job.started_at = now
            job.optuna_trial_id = None
        studies = {job.study_id: session.get_one(Study, job.study_id) for job in jobs}
        for study in studies.values():
            if study.status == StudyStatus.QUEUED:
                study.status = StudyStatus.RUNNING
                study.updated_at = now
        return [_claimed(job, studies[job.study_id], expires) for job in jobs]

    return run_transaction(factory, work)


def _claimed(job: Job, study: Study, expires: datetime) -> ClaimedJob:
    assert job.lease_token is not None
    return ClaimedJob(
        job_id=job.id,
        study_id=job.study_id,
        cell_index=job.cell_index,
        variant=job.variant,
        p_detach=job.p_detach,
        lr=job.lr,
        seed=job.seed,
        lease_token=job.lease_token,
        lease_expires_at=expires,
        attempt=job.attempts,
        pack_key=job.pack_key,
        spec_json=study.spec_json,
        optuna_study_name=study.optuna_study_name,
    )

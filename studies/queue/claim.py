"""Claiming work: up to `max_jobs` queued jobs that share one pack key, in one short transaction.

Order: highest priority first; among equal priorities the study with the fewest running jobs
(fair share between studies), then the oldest job. The head job fixes the pack key; the rest of
the pack is filled in the same order. PostgreSQL: rows are taken with FOR UPDATE SKIP LOCKED, so
concurrent claimers pass each other by. SQLite: the transaction starts with BEGIN IMMEDIATE, so
claims run one at a time (see studies.db.engine).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction
from studies.db.models import Job, JobState, Study, StudyStatus
from studies.queue._common import resolve_now
from studies.queue._types import ClaimedJob


def _queued_in_claim_order() -> Select[Job]:
    running = (
        select(Job.study_id, func.count().label("n"))
        .where(Job.state == JobState.RUNNING)
        .group_by(Job.study_id)
        .subquery()
    )
    return (
        select(Job)
        .join(Study, Study.id == Job.study_id)
        .outerjoin(running, running.c.study_id == Job.study_id)
        .where(Job.state == JobState.QUEUED, Study.cancel_requested.is_(False))
        .order_by(Job.priority.desc(), func.coalesce(running.c.n, 0), Job.id)
        .with_for_update(of=Job, skip_locked=True)
    )


def claim(
    factory: sessionmaker[Session],
    worker_id: str,
    max_jobs: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[ClaimedJob]:
    """Lease up to `max_jobs` jobs of one pack to `worker_id`; [] when nothing is queued."""
    if max_jobs < 1:
        raise ValueError("max_jobs must be at least 1")
    now = resolve_now(now)
    expires = now + timedelta(seconds=lease_seconds)

    def work(session: Session) -> list[ClaimedJob]:
        queued = _queued_in_claim_order()
        head = session.scalars(queued.limit(1)).first()
        if head is None:
            return []
        jobs = [head]
        if max_jobs > 1:
            same_pack = queued.where(Job.pack_key == head.pack_key, Job.id != head.id).limit(max_jobs - 1)
            jobs.extend(session.scalars(same_pack))
        for job in jobs:
            job.state = JobState.RUNNING
            job.worker_id = worker_id
            job.attempts += 1
            job.lease_token = uuid4().hex
            job.lease_expires_at = expires
            job.started_at = now
            job.optuna_trial_id = None
        study_ids = {job.study_id for job in jobs}
        session.execute(
            update(Study)
            .where(Study.id.in_(study_ids), Study.status == StudyStatus.QUEUED)
            .values(status=StudyStatus.RUNNING, updated_at=now)
        )
        studies = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(study_ids)))}
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

"""A study's failed cells queued again, by a person who fixed what failed them (`hdetach requeue`)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction
from studies.db.models import Job, JobState, StudyStatus
from studies.exceptions import Conflict, NotFound
from studies.queue._common import lock_study, resolve_now
from studies.queue._types import RequeueResult


def requeue_failed(factory: sessionmaker[Session], study_id: int, extra_attempts: int) -> RequeueResult:
    """Queue every failed cell of a study again, in one transaction, each with `extra_attempts`
    more attempts (counted on from its past ones) and its lost leases forgotten, so it may be lost
    as often as a fresh cell. Each claim is a new attempt with a new Optuna trial; the failed
    attempts' trials and the last error stay as they were. A finished study goes back to running.

    NotFound for an unknown id; Conflict for a cancelled study (or one being cancelled). With no
    failed cell nothing changes.
    """
    if extra_attempts < 1:
        raise ValueError("extra_attempts must be at least 1")
    now = resolve_now(None)

    def work(session: Session) -> RequeueResult:
        # jobs first, then the study row: the order claim() and settle_study() take their locks in
        requeued = session.scalars(
            update(Job)
            .where(Job.study_id == study_id, Job.state == JobState.FAILED)
            .values(
                state=JobState.QUEUED,
                max_attempts=Job.attempts + extra_attempts,
                lost_leases=0,
                worker_id=None,
                optuna_trial_id=None,
                started_at=None,
                finished_at=None,
            )
            .returning(Job.id)
        ).all()
        study = lock_study(session, study_id)
        if study is None:
            raise NotFound(f"no study {study_id}")
        if study.cancel_requested or study.status == StudyStatus.CANCELLED:
            raise Conflict(f"study {study_id} is cancelled: its cells cannot be queued again")  # rolls back
        if requeued and study.status != StudyStatus.QUEUED:
            study.status = StudyStatus.RUNNING
            study.finished_at = None
            study.updated_at = now
        return RequeueResult(study_id, StudyStatus(study.status), len(requeued))

    return run_transaction(factory, work)

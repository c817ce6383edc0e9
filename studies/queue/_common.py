"""Helpers shared by the queue modules: the clock and settling a study whose jobs have ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from studies.db.models import FINISHED_STUDY, Job, JobState, Study, StudyStatus, as_utc, utcnow

# Core tables for the hot paths (claim, complete): no ORM unit of work, no per-row objects.
JOBS = cast(Table, Job.__table__)
STUDIES = cast(Table, Study.__table__)


def resolve_now(now: datetime | None) -> datetime:
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return as_utc(now)


def lock_study(session: Session, study_id: int) -> Study | None:
    """The study row, locked (PostgreSQL) and re-read, so counts taken after it see every committed job."""
    statement = (
        select(Study).where(Study.id == study_id).with_for_update().execution_options(populate_existing=True)
    )
    return session.scalars(statement).one_or_none()


def state_counts(session: Session, study_id: int) -> dict[str, int]:
    """Jobs per state (plain strings, JSON-ready), every state present."""
    rows = session.execute(
        select(Job.state, func.count()).where(Job.study_id == study_id).group_by(Job.state)
    ).all()
    counts = {state.value: 0 for state in JobState}
    counts.update({str(state): n for state, n in rows})
    return counts


def queued_or_cancelling(study_id: Any) -> Any:
    """Whether a study may have just ended its last job: nothing of it queued, or a cancel asked.

    While jobs are queued, whoever ends the last of them settles the study; this one indexed
    lookup keeps the study row lock (in settle_study) off the hot path, so only the jobs that end
    at the tail of a study serialise on it.
    """
    queued = (
        select(JOBS.c.id)
        .where(JOBS.c.study_id == study_id, JOBS.c.state == JobState.QUEUED)
        .limit(1)
        .exists()
    )
    cancelling = select(STUDIES.c.cancel_requested).where(STUDIES.c.id == study_id).scalar_subquery()
    return or_(~queued, cancelling.is_(True)).label("may_be_last")


_MAY_BE_LAST = select(queued_or_cancelling(bindparam("b_study")))


def settle_study(session: Session, study_id: int, now: datetime) -> None:
    """Finish the study once none of its jobs is running or (unless cancelled) queued.

    Its status becomes cancelled if a cancel was requested, failed if every job failed, else done.
    Call it after changing a job's state, in the same transaction: the row lock makes two jobs
    ending at once agree on which of them was the last.
    """
    if not session.execute(_MAY_BE_LAST, {"b_study": study_id}).scalar():
        return
    study = lock_study(session, study_id)
    if study is None or study.status in FINISHED_STUDY:
        return
    counts = state_counts(session, study_id)
    if counts[JobState.RUNNING]:
        return
    if study.cancel_requested:
        # a job released or reaped while the cancel ran may have gone back to the queue
        session.execute(
            update(Job)
            .where(Job.study_id == study_id, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELLED, finished_at=now)
        )
        study.status = StudyStatus.CANCELLED
    elif counts[JobState.QUEUED]:
        return
    elif counts[JobState.FAILED] and not counts[JobState.DONE]:
        study.status = StudyStatus.FAILED
    else:
        study.status = StudyStatus.DONE
    study.finished_at = now
    study.updated_at = now


def end_attempt(job: Job, state: JobState, now: datetime, error: str | None) -> None:
    job.state = state
    job.lease_token = None
    job.lease_expires_at = None
    if error is not None:
        job.last_error = error
    if state is JobState.QUEUED:
        job.worker_id = None
        job.optuna_trial_id = None  # the next attempt gets its own trial
    else:
        job.finished_at = now

"""The reaper: running jobs whose lease expired go back to the queue (their worker died, not
their trial), silent workers are marked stopped, and studies a dead process left unsettled are
settled."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction
from studies.db.models import Job, JobState, Study, StudyStatus, Worker, WorkerStatus
from studies.queue._common import JOBS, STUDIES, end_attempt, resolve_now, settle_study
from studies.queue._types import ReapedJob
from studies.queue.retry import RetryPolicy

_live_job = exists().where(
    JOBS.c.study_id == STUDIES.c.id, JOBS.c.state.in_([JobState.QUEUED, JobState.RUNNING])
)
_UNSETTLED = select(STUDIES.c.id).where(
    STUDIES.c.status.in_([StudyStatus.QUEUED, StudyStatus.RUNNING]), ~_live_job.correlate(STUDIES)
)


def reap(
    factory: sessionmaker[Session], now: datetime | None = None, silent_after: float | None = None
) -> list[ReapedJob]:
    """Running jobs whose lease has expired: back to the queue without spending an attempt (the
    worker died, not the trial), or failed after `MAX_LOST_LEASES` lost leases. With
    `silent_after` (seconds), workers that have not sent a heartbeat for that long are marked
    stopped, so `GET /workers` and `/metrics` stop counting a killed worker as running."""
    now = resolve_now(now)

    def work(session: Session) -> list[ReapedJob]:
        rows = session.execute(
            select(Job, Study.cancel_requested)
            .join(Study, Study.id == Job.study_id)
            .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
            .order_by(Job.id)
            .with_for_update(of=Job, skip_locked=True)
        ).all()
        reaped = []
        for job, cancel_requested in rows:
            # an infrastructure failure: the claim's attempt is given back, the lost lease counted
            job.attempts -= 1
            job.lost_leases += 1
            decision = RetryPolicy(job.max_attempts).decide_lost(job.lost_leases, cancel_requested)
            reaped.append(ReapedJob(job.id, job.study_id, job.worker_id, job.optuna_trial_id, decision.state))
            error = f"lease expired (worker {job.worker_id})"
            end_attempt(job, decision.state, now, error if decision.retry else f"{error}; {decision.reason}")
        if silent_after is not None:
            # a worker silent this long was killed or lost its node: it no longer counts as running
            silent_since = now - timedelta(seconds=silent_after)
            session.execute(
                update(Worker)
                .where(
                    Worker.status.in_([WorkerStatus.RUNNING, WorkerStatus.STOPPING]),
                    Worker.last_heartbeat < silent_since,
                )
                .values(status=WorkerStatus.STOPPED, reason=f"no heartbeat for over {silent_after:g} s")
            )
        # and studies left unsettled by a process that died between completing and settling
        unsettled = set(session.scalars(_UNSETTLED))
        for study_id in sorted({job.study_id for job in reaped} | unsettled):
            settle_study(session, study_id, now)
        return reaped

    return run_transaction(factory, work)

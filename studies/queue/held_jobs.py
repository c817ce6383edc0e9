"""What the holder of a claimed job does with it: heartbeats, its Optuna trial, and how the attempt
ends (completed, queued again, failed, cancelled). Expired leases are the reaper's
(`studies.queue.reaper`).

Every report is guarded by the lease token the claim handed out, so a report from an attempt
that has since been reaped or reclaimed changes nothing: `complete_many` and `set_optuna_trials`
leave it out of the ids they return, `release` and friends return False.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Any

from sqlalchemy import Integer, String, Text, bindparam, case, select, update
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_autocommit, run_transaction
from studies.db.models import Job, JobState, Study, UTCDateTime, Worker
from studies.queue._common import JOBS, end_attempt, queued_or_cancelling, resolve_now, settle_study
from studies.queue._types import HeartbeatReply
from studies.queue.retry import RetryPolicy


def _held(job_id: Any, token: Any) -> Any:
    return (JOBS.c.id == job_id) & (JOBS.c.lease_token == token) & (JOBS.c.state == JobState.RUNNING)


# A pack's jobs are updated by one statement, prebuilt once per pack size: job i binds b_id<i>,
# b_tok<i> and its own value b_val<i>. Built per call, the statement cost more CPU than its round trip.
def _per_job(size: int, value_type: Any) -> tuple[list[Any], Any]:
    """The where-clauses picking each of `size` jobs that its own token still holds (the id list
    finds rows by primary key, a CASE checks each one's token), and a CASE giving each its value."""
    ids = [bindparam(f"b_id{i}", type_=Integer) for i in range(size)]
    tokens = case(*[(JOBS.c.id == ids[i], bindparam(f"b_tok{i}", type_=String)) for i in range(size)])
    values = case(*[(JOBS.c.id == ids[i], bindparam(f"b_val{i}", type_=value_type)) for i in range(size)])
    held = [JOBS.c.id.in_(ids), JOBS.c.lease_token == tokens, JOBS.c.state == JobState.RUNNING]
    return held, values


def _per_job_params(rows: Sequence[tuple[int, str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, (job_id, token, value) in enumerate(rows):
        params |= {f"b_id{i}": job_id, f"b_tok{i}": token, f"b_val{i}": value}
    return params


def _lock_held(session: Session, job_id: int, token: str) -> tuple[Job, bool] | None:
    """The job and its study's cancel flag, if `token` still holds it."""
    row = session.execute(
        select(Job, Study.cancel_requested)
        .join(Study, Study.id == Job.study_id)
        .where(_held(job_id, token))
        .with_for_update(of=Job)
    ).first()
    return None if row is None else (row[0], row[1])


def heartbeat(
    factory: sessionmaker[Session],
    worker_id: str,
    leases: Mapping[int, str],
    lease_seconds: float,
    now: datetime | None = None,
) -> HeartbeatReply:
    """Extend the leases still held (job id -> token); say which are lost or belong to cancelled studies."""
    now = resolve_now(now)

    def work(session: Session) -> HeartbeatReply:
        held: set[int] = set()
        cancelled: set[int] = set()
        if leases:
            rows = session.execute(
                select(Job.id, Job.lease_token, Job.state, Study.cancel_requested)
                .join(Study, Study.id == Job.study_id)
                .where(Job.id.in_(list(leases)))
                .with_for_update(of=Job)
            ).all()
            for job_id, token, state, cancel_requested in rows:
                if state == JobState.RUNNING and token == leases[job_id]:
                    held.add(job_id)
                    if cancel_requested:
                        cancelled.add(job_id)
        if held:
            expires = now + timedelta(seconds=lease_seconds)
            session.execute(update(Job).where(Job.id.in_(held)).values(lease_expires_at=expires))
        # the worker row last: reap() locks jobs before anything else too
        session.execute(update(Worker).where(Worker.id == worker_id).values(last_heartbeat=now))
        return HeartbeatReply(frozenset(held), frozenset(set(leases) - held), frozenset(cancelled))

    return run_transaction(factory, work)


def set_optuna_trials(factory: sessionmaker[Session], trials: Sequence[tuple[int, str, int]]) -> set[int]:
    """Record each (job id, lease token, Optuna trial id) attempt's trial, in one statement;
    returns the ids of the jobs whose lease was still held (the others are left as they were)."""
    if not trials:
        return set()
    statement = _set_trials_statement(len(trials))
    params = _per_job_params(trials)
    return set(
        run_autocommit(factory, lambda connection: connection.execute(statement, params).scalars().all())
    )


@lru_cache(maxsize=64)  # one per pack size in use
def _set_trials_statement(size: int) -> Any:
    held, trial_ids = _per_job(size, Integer)
    return update(JOBS).where(*held).values(optuna_trial_id=trial_ids).returning(JOBS.c.id)


def retry_held(factory: sessionmaker[Session], job_id: int, token: str, error: str) -> int | None:
    """An executor that retries on its own (Ray Tune) starts a new attempt under the same lease.

    Records the error and counts the attempt; returns the new attempt number, or None if the
    lease is no longer held.
    """

    def work(session: Session) -> int | None:
        statement = (
            update(JOBS)
            .where(_held(job_id, token))
            .values(attempts=JOBS.c.attempts + 1, last_error=error, optuna_trial_id=None)
            .returning(JOBS.c.attempts)
        )
        return session.scalars(statement).first()

    return run_transaction(factory, work)


@lru_cache(maxsize=64)  # one per pack size in use
def _complete_statements(size: int) -> tuple[Any, Any]:
    """The UPDATE recording `size` results, and (PostgreSQL) the same as a CTE that also asks, in
    the same round trip, whether each study may have just ended its last job (a CTE's sub-selects
    see the table as it was before the UPDATE)."""
    held, results = _per_job(size, Text)
    statement = (
        update(JOBS)
        .where(*held)
        .values(
            state=JobState.DONE,
            result_json=results,
            finished_at=bindparam("b_now", type_=UTCDateTime),
            lease_token=None,
            lease_expires_at=None,
        )
        .returning(JOBS.c.id, JOBS.c.study_id)
    )
    done = statement.cte("done")
    return statement, select(done.c.id, done.c.study_id, queued_or_cancelling(done.c.study_id))


def complete_many(
    factory: sessionmaker[Session],
    results: Sequence[tuple[int, str, Mapping[str, Any]]],
    now: datetime | None = None,
) -> set[int]:
    """Record each (job id, lease token, result) outcome exactly once, in one statement; returns
    the ids recorded. A late or repeated report is left out and changes nothing."""
    if not results:
        return set()
    now = resolve_now(now)
    statement, ask = _complete_statements(len(results))
    params = _per_job_params([(job_id, token, json.dumps(result)) for job_id, token, result in results])
    params["b_now"] = now

    if factory.kw["bind"].dialect.name == "postgresql":
        # One autocommitted statement; a study that may have just ended its last job is settled in
        # a transaction of its own (the reaper settles it, should this process die between).
        rows = run_autocommit(factory, lambda connection: connection.execute(ask, params).all())
        for study_id in {row.study_id for row in rows if row.may_be_last}:
            run_transaction(factory, partial(settle_study, study_id=study_id, now=now))
        return {row.id for row in rows}

    def work(session: Session) -> set[int]:
        rows = session.execute(statement, params).all()
        for study_id in {row.study_id for row in rows}:
            settle_study(session, study_id, now)
        return {row.id for row in rows}

    return run_transaction(factory, work)


def release(
    factory: sessionmaker[Session],
    job_id: int,
    token: str,
    error: str | None = None,
    count_attempt: bool = False,
    now: datetime | None = None,
) -> bool:
    """Give a job back unfinished (e.g. the worker is stopping); the attempt is not counted unless asked.

    A counted attempt goes through the retry policy, so it may end the job as failed.
    """
    now = resolve_now(now)

    def work(session: Session) -> bool:
        found = _lock_held(session, job_id, token)
        if found is None:
            return False
        job, cancel_requested = found
        if count_attempt:
            state = RetryPolicy(job.max_attempts).decide(job.attempts, cancel_requested).state
        else:
            job.attempts -= 1
            state = JobState.CANCELLED if cancel_requested else JobState.QUEUED
        end_attempt(job, state, now, error)
        settle_study(session, job.study_id, now)
        return True

    return run_transaction(factory, work)


def fail(
    factory: sessionmaker[Session], job_id: int, token: str, error: str, now: datetime | None = None
) -> bool:
    """The attempt raised: queue the job again, or fail it for good after `max_attempts`."""
    return release(factory, job_id, token, error, count_attempt=True, now=now)


def cancel_job(factory: sessionmaker[Session], job_id: int, token: str, now: datetime | None = None) -> bool:
    """A running job stopped because its study was cancelled."""
    now = resolve_now(now)

    def work(session: Session) -> bool:
        found = _lock_held(session, job_id, token)
        if found is None:
            return False
        job, _ = found
        end_attempt(job, JobState.CANCELLED, now, None)
        settle_study(session, job.study_id, now)
        return True

    return run_transaction(factory, work)

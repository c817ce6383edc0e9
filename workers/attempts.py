"""One attempt at a pack, as every executor makes it: its Optuna trials, its curves, how each job
ends; and the reaper's clean-up of what dead workers left.

The queue worker (`workers.worker`) and the Ray driver (`workers.ray_executor`) share these, so a
study's database rows and Optuna trials look the same whichever executor ran it. What an executor
process holds (its database, its leases and their heartbeat) is `workers.executor`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from optuna.storages import RDBStorage
from sqlalchemy.orm import Session, sessionmaker

from studies import queue
from studies.db.models import JobState
from studies.queue import ClaimedJob
from studies.spec import GridCell, StudySpec
from studies.tracking import (
    abandon_closing,
    close_trials,
    report_values,
    result_closing,
    running_trials_with,
    start_trials,
)
from studies.training import TrialRecord
from workers import faults

log = logging.getLogger("hdetach.leases")

RECORDED = frozenset({"completed", "succeeded", "diverged"})  # trainer statuses that are results


def lease_tag(token: str) -> str:
    """What an Optuna trial records of the lease it was opened under: a digest, not the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def reap_expired(
    factory: sessionmaker[Session], storage: RDBStorage, lease_seconds: float | None = None
) -> bool:
    """Hand expired leases back to the queue and close their abandoned Optuna trials; then, if any
    were reaped, sweep Optuna for what their dead workers left. True if any were reaped.
    With `lease_seconds`, workers silent for two lease periods are marked stopped."""
    reaped = queue.reap(factory, silent_after=None if lease_seconds is None else 2 * lease_seconds)
    close_trials(
        storage,
        [
            abandon_closing(r.optuna_trial_id, "lease expired")
            for r in reaped
            if r.optuna_trial_id is not None
        ],
    )
    if reaped:
        sweep_optuna_trials(factory, storage)
    return bool(reaped)


def sweep_optuna_trials(factory: sessionmaker[Session], storage: RDBStorage) -> int:
    """Finish the Optuna trials a dead worker left RUNNING; returns how many were closed.

    A worker writes an attempt in two databases' worth of steps, and may die between any two:
    after opening its Optuna trials but before its jobs point at them (the trials would stay
    RUNNING for ever), or after recording results in our tables but before closing its trials
    (the cells would be done with no recorded Optuna trial). Each trial carries its job id and a
    digest of the lease it was opened under, so a RUNNING trial is live only while its job is
    still running under that lease. Otherwise: if the job recorded its result under this very
    trial, the result is written to Optuna as the worker would have; else the trial is closed as
    abandoned. A worker racing this writes the same thing, and only RUNNING trials are closed.
    """
    running = running_trials_with(storage, ("job_id", "lease"))
    if not running:
        return 0
    jobs = queue.job_outcomes(factory, [int(attrs["job_id"]) for _, attrs in running])
    closings = []
    for trial_id, attrs in running:
        job = jobs.get(int(attrs["job_id"]))
        if job is None:
            closings.append(abandon_closing(trial_id, "its job was deleted"))
            continue
        if job.state == JobState.RUNNING and (
            "lease" not in attrs or (job.lease_token and lease_tag(job.lease_token) == attrs["lease"])
        ):
            continue  # live (or opened before trials carried their lease: left to the reaper)
        if job.state == JobState.DONE and job.optuna_trial_id == trial_id and job.result_json:
            # the metric only, unvalidated: a study stored before a stricter spec must not stop the sweep
            spec = json.loads(job.spec_json)
            metric, selection = spec["success"]["metric"], spec.get("selection", "final")
            closings.append(result_closing(trial_id, metric, json.loads(job.result_json), selection))
        else:
            closings.append(abandon_closing(trial_id, f"its worker died (job now {job.state})"))
    return sum(close_trials(storage, closings))


@dataclass
class PackAttempt:
    """One attempt at a pack of claimed jobs: its Optuna trials, its curves, and how each job ends.

    Every report to the queue goes through the job's lease token, so a late or repeated one
    changes nothing; the matching Optuna trial is then closed as abandoned.
    """

    factory: sessionmaker[Session]
    storage: RDBStorage
    jobs: list[ClaimedJob]
    worker_id: str
    device: str
    trial_ids: dict[int, int] = field(default_factory=dict)  # job id -> Optuna trial id
    recorded: set[int] = field(default_factory=set)  # job ids whose result is in our tables
    settle_calls: int = 0

    @property
    def spec(self) -> StudySpec:
        """The pack's spec (its jobs share one pack key, so one spec)."""
        return self.jobs[0].spec

    def cells(self) -> list[GridCell]:
        return [job.cell for job in self.jobs]

    def __post_init__(self) -> None:
        if len({job.study_id for job in self.jobs}) != 1:
            raise ValueError("a pack holds the jobs of exactly one study")

    def open(self) -> None:
        """Start one RUNNING Optuna trial per job (one transaction) and remember it on the job row."""
        spec, first = self.spec, self.jobs[0]
        starts = [
            (
                cell,
                {
                    "attempt": job.attempt,
                    "worker": self.worker_id,
                    "device": self.device,
                    # the trials it trained beside, sharing each step's time (its wall_time_s)
                    "pack_size": len(self.jobs),
                    "job_id": job.job_id,
                    "lease": lease_tag(job.lease_token),
                },
            )
            for job, cell in zip(self.jobs, self.cells(), strict=True)
        ]
        trial_ids = start_trials(self.storage, first.optuna_study_name, spec, starts, first.study_id)
        self.trial_ids = {job.job_id: trial_id for job, trial_id in zip(self.jobs, trial_ids, strict=True)}
        faults.hit("trials-started")
        queue.set_optuna_trials(
            self.factory, [(job.job_id, job.lease_token, self.trial_ids[job.job_id]) for job in self.jobs]
        )

    def report(self, points: dict[int, dict[str, Any]]) -> None:
        """One evaluation's curve points (pack position -> point) as intermediate values."""
        faults.hit("curve-write")
        metric = self.spec.success.metric
        values = [
            (self.trial_ids[self.jobs[k].job_id], int(point["step"]), point[f"val_{metric}"])
            for k, point in points.items()
            if point.get(f"val_{metric}") is not None
        ]
        report_values(self.storage, values)

    def settle(self, records: Sequence[TrialRecord | dict[str, Any]]) -> None:
        """Record each job's outcome exactly once, or give the job back; records in job order.

        The pack's results are recorded in one statement, and its Optuna trials closed in one
        transaction."""
        results: dict[int, dict[str, Any]] = {}  # job id -> result to record
        outcomes: dict[int, str] = {}  # job id -> why its trial records nothing
        for job, record in zip(self.jobs, records, strict=True):
            record = record if isinstance(record, dict) else record.to_dict()
            if record["status"] in RECORDED:
                extra = {"device": self.device, "worker": self.worker_id, "attempt": job.attempt}
                results[job.job_id] = record | extra
            else:
                outcomes[job.job_id] = self._give_back(job, record["status"])
        # Kept across calls: settle runs again when the database went away part-way, and a result
        # recorded by an earlier call must still close its trial as recorded. An earlier call may
        # also have committed without learning it (the connection dropped after the commit): a job
        # now done under this attempt's trial holds this attempt's result.
        if self.settle_calls:
            done = queue.job_outcomes(self.factory, [j for j in results if j not in self.recorded])
            self.recorded |= {
                job_id
                for job_id, job in done.items()
                if job.state == JobState.DONE and job.optuna_trial_id == self.trial_ids.get(job_id)
            }
        self.settle_calls += 1
        self.recorded |= queue.complete_many(
            self.factory,
            [
                (job.job_id, job.lease_token, results[job.job_id])
                for job in self.jobs
                if job.job_id in results and job.job_id not in self.recorded
            ],
        )
        recorded = self.recorded
        faults.hit("results-recorded")
        metric = self.spec.success.metric
        closings = []
        for job in self.jobs:
            trial_id = self.trial_ids.get(job.job_id)
            if trial_id is None:
                continue
            if job.job_id in recorded:
                closings.append(result_closing(trial_id, metric, results[job.job_id], self.spec.selection))
            else:
                closings.append(abandon_closing(trial_id, outcomes.get(job.job_id, "late report rejected")))
        close_trials(self.storage, closings)

    def _give_back(self, job: ClaimedJob, status: str) -> str:
        """End a job that has no result to record; returns why its trial is abandoned."""
        if status == "cancelled":
            queue.cancel_job(self.factory, job.job_id, job.lease_token)
            return "cancelled"
        if status == "lost":
            return "lease lost"
        # interrupted by a stop request: it will run again
        queue.release(self.factory, job.job_id, job.lease_token, "worker stopped")
        return "released (worker stopping)"

    def fail(self, message: str) -> None:
        """The trial raised: each job is queued again, or failed for good after max_attempts."""
        for job in self.jobs:
            queue.fail(self.factory, job.job_id, job.lease_token, message)
        self.abandon(f"error: {message[:200]}")

    def give_back(self, message: str) -> None:
        """An infrastructure error: each job goes back to the queue, no attempt spent.

        With the database itself down this may not get through; the leases then expire and the
        reaper hands the jobs back, again without spending an attempt."""
        for job in self.jobs:
            queue.release(self.factory, job.job_id, job.lease_token, f"infrastructure: {message}")
        self.abandon(f"infrastructure error: {message[:200]}")

    def abandon(self, outcome: str) -> None:
        """Close this attempt's trials, those that were opened, as recording nothing."""
        close_trials(
            self.storage, [abandon_closing(trial_id, outcome) for trial_id in self.trial_ids.values()]
        )

    def split(self, outcome: str) -> list[PackAttempt]:
        """Close this attempt's trials and hand its jobs on as two smaller packs, still held and
        with their attempt numbers unchanged (a pack too large for the device is not the trials' fault)."""
        self.abandon(outcome)
        half = len(self.jobs) // 2
        return [
            PackAttempt(self.factory, self.storage, jobs, self.worker_id, self.device)
            for jobs in (self.jobs[:half], self.jobs[half:])
        ]

    def next_attempt(self, error: str) -> PackAttempt:
        """This attempt failed but the jobs stay held (the executor retries them itself): close its
        trials and count a new attempt for each job (one no longer held keeps its number: nothing it
        reports will be recorded)."""
        self.abandon(f"error: {error[:200]}")
        jobs = []
        for job in self.jobs:
            attempt = queue.retry_held(self.factory, job.job_id, job.lease_token, error)
            jobs.append(job if attempt is None else replace(job, attempt=attempt))
        return PackAttempt(self.factory, self.storage, jobs, self.worker_id, self.device)

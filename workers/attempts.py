"""What every executor does around training: hold leases, log each attempt to Optuna, settle jobs.

The queue worker (`workers.worker`) and the Ray driver (`workers.ray_executor`) share these, so a
study's database rows and Optuna trials look the same whichever engine ran it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from sqlalchemy.orm import Session, sessionmaker

from deployment.backend import Database
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
from workers.failures import FailureKind, classify, one_line

T = TypeVar("T")

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


class LeaseKeeper:
    """The leases one process holds, renewed by a heartbeat thread.

    The heartbeat also learns which jobs were lost (reaped, or finished elsewhere) and which
    belong to cancelled studies; executors read `lost` and `cancelled` to stop that work.
    """

    def __init__(
        self, factory: sessionmaker[Session], worker_id: str, lease_seconds: float, heartbeat_seconds: float
    ):
        self.factory, self.worker_id = factory, worker_id
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds
        self._leases: dict[int, str] = {}  # job id -> lease token
        self._lost: set[int] = set()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def hold(self, jobs: Iterable[ClaimedJob]) -> None:
        with self._lock:
            for job in jobs:
                self._leases[job.job_id] = job.lease_token
                self._lost.discard(job.job_id)
                self._cancelled.discard(job.job_id)

    def forget(self, jobs: Iterable[ClaimedJob]) -> None:
        with self._lock:
            for job in jobs:
                self._leases.pop(job.job_id, None)

    @property
    def lost(self) -> set[int]:
        with self._lock:
            return set(self._lost)

    @property
    def cancelled(self) -> set[int]:
        with self._lock:
            return set(self._cancelled)

    def release_all(self, reason: str) -> None:
        """Give back every job still held, unfinished and without counting the attempt."""
        with self._lock:
            leases, self._leases = self._leases, {}
        for job_id, token in leases.items():
            queue.release(self.factory, job_id, token, reason)

    def beat_once(self) -> None:
        with self._lock:
            leases = dict(self._leases)
        reply = queue.heartbeat(self.factory, self.worker_id, leases, self.lease_seconds)
        with self._lock:
            self._lost |= set(reply.lost)
            self._cancelled |= set(reply.cancelled)

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            try:
                self.beat_once()
            except Exception:  # a database hiccup must not kill the executor; the next beat retries
                log.exception("heartbeat failed")


def _open_database(database_url: str) -> Database:
    """The executor's database with its Optuna storage opened now, so that opening fails (and is
    tried again) here rather than at the first trial. No pre-ping: queue operations retry instead."""
    database = Database(database_url, pool_pre_ping=False)
    try:
        database.storage  # noqa: B018 (opened for its side effect)
    except BaseException:
        database.close()
        raise
    return database


def wait_out_infrastructure(action: Callable[[], T], what: str, patience_seconds: float = 120.0) -> T:
    """`action()`, tried again with growing pauses while it fails for infrastructure reasons (the
    database restarting, a dropped connection); other errors, or one past `patience_seconds`, raise."""
    deadline, pause = time.monotonic() + patience_seconds, 0.5
    while True:
        try:
            return action()
        except Exception as error:
            if classify(error) is not FailureKind.INFRASTRUCTURE or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); trying again in %.1f s", what, one_line(error), pause)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


class Executor:
    """What every executor holds: an id, the database, Optuna's storage, its leases, a stop flag."""

    def __init__(
        self,
        database_url: str,
        id_prefix: str,
        lease_seconds: float,
        heartbeat_seconds: float,
        database_patience_seconds: float = 120.0,
    ):
        self.id = f"{id_prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.database = wait_out_infrastructure(
            lambda: _open_database(database_url), "opening the database", database_patience_seconds
        )
        self.engine, self.factory, self.storage = (
            self.database.engine,
            self.database.factory,
            self.database.storage,
        )
        self.stop_requested = threading.Event()
        self.leases = LeaseKeeper(self.factory, self.id, lease_seconds, heartbeat_seconds)

    def close(self) -> None:
        self.database.close()


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

"""A queue worker: claim a pack of jobs, train them as one packed run, record each result once.

One worker per device. The loop (`Worker.run`) has explicit exits: a first SIGTERM or SIGINT
finishes the current evaluation interval and gives back what it holds; a second one exits at
once. A SIGKILL loses nothing but time: the leases expire, the reaper requeues the jobs, and a
late report from the killed attempt would be rejected.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from studies import queue
from studies.db.engine import make_engine, session_factory, upgrade
from studies.queue import ClaimedJob
from studies.spec import GridCell, StudySpec
from studies.tracking import (
    abandon_trial,
    create_optuna_study,
    open_storage,
    record_result,
    report,
    start_trial,
)
from studies.training import PackTrainer, TrialRecord

log = logging.getLogger("hdetach.worker")


@dataclass
class WorkerOptions:
    database_url: str
    device: str = "cpu"
    pack: int = 8
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 2.0
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    max_packs: int | None = None  # stop after this many packs (tests, benchmarks)
    exit_when_idle: bool = False  # stop when the queue is empty instead of polling


@dataclass
class _Held:
    """The jobs of the pack in training, shared with the heartbeat thread."""

    leases: dict[int, str] = field(default_factory=dict)  # job id -> lease token
    lost: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    def __init__(self, options: WorkerOptions):
        self.options = options
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        upgrade(options.database_url)
        self.engine = make_engine(options.database_url)
        self.factory = session_factory(self.engine)
        self.storage = open_storage(options.database_url)
        self.stop_requested = threading.Event()
        self.held = _Held()
        self.packs_done = 0
        self.training_seconds = 0.0  # inside PackTrainer.run: the rest of the wall time is overhead

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self._install_signal_handlers()
        queue.register_worker(
            self.factory, self.id, socket.gethostname(), os.getpid(), self.options.device, self.options.pack
        )
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop_requested.is_set():
                self._reap()
                jobs = queue.claim(self.factory, self.id, self.options.pack, self.options.lease_seconds)
                if jobs:
                    self._train_pack(jobs)
                    self.packs_done += 1
                    if self.options.max_packs is not None and self.packs_done >= self.options.max_packs:
                        break
                elif self.options.exit_when_idle and queue.unfinished_jobs(self.factory) == 0:
                    break
                else:
                    self.stop_requested.wait(self.options.poll_seconds)
        finally:
            self._release_all("worker stopping")
            self.stop_requested.set()
            queue.worker_stopped(self.factory, self.id)
            self.storage.engine.dispose()
            self.engine.dispose()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, frame: Any) -> None:
            if self.stop_requested.is_set():  # second signal: leave now, leases will expire
                os._exit(128 + signum)
            log.warning("signal %s: finishing the current evaluation interval, then stopping", signum)
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _reap(self) -> None:
        for reaped in queue.reap(self.factory):
            if reaped.optuna_trial_id is not None:
                abandon_trial(self.storage, reaped.optuna_trial_id, "lease expired")

    def _heartbeat_loop(self) -> None:
        while not self.stop_requested.wait(self.options.heartbeat_seconds):
            with self.held.lock:
                leases = dict(self.held.leases)
            try:
                reply = queue.heartbeat(self.factory, self.id, leases, self.options.lease_seconds)
            except Exception:  # a database hiccup must not kill the worker; the next beat retries
                log.exception("heartbeat failed")
                continue
            with self.held.lock:
                self.held.lost |= set(reply.lost)
                self.held.cancelled |= set(reply.cancelled)

    # -- one pack ---------------------------------------------------------------------------
    def _train_pack(self, jobs: list[ClaimedJob]) -> None:
        spec = StudySpec.model_validate_json(jobs[0].spec_json)
        cells = [
            GridCell(index=j.cell_index, variant=j.variant, p_detach=j.p_detach, lr=j.lr, seed=j.seed)
            for j in jobs
        ]
        trial_ids = {}
        for job, cell in zip(jobs, cells, strict=True):
            job_spec = StudySpec.model_validate_json(job.spec_json)
            create_optuna_study(self.storage, job.optuna_study_name, job_spec, job.study_id)  # idempotent
            attrs = {
                "attempt": job.attempt,
                "worker": self.id,
                "device": self.options.device,
                "job_id": job.job_id,
            }
            trial_ids[job.job_id] = start_trial(self.storage, job.optuna_study_name, job_spec, cell, attrs)
            queue.set_optuna_trial(self.factory, job.job_id, job.lease_token, trial_ids[job.job_id])
        with self.held.lock:
            self.held.leases = {j.job_id: j.lease_token for j in jobs}
            self.held.lost.clear()
            self.held.cancelled.clear()
        log.info(
            "training %d trials of study %s as one pack on %s",
            len(jobs),
            jobs[0].study_id,
            self.options.device,
        )
        try:
            trainer = PackTrainer(
                spec.training_config(), [c.trial_params(spec) for c in cells], self.options.device
            )
            started = time.perf_counter()
            records = trainer.run(
                on_eval=lambda k, point: self._on_eval(trainer, jobs, trial_ids, k, point),
                should_stop=lambda: self._should_stop(trainer, jobs),
            )
            self.training_seconds += time.perf_counter() - started
        except Exception as error:
            message = "".join(traceback.format_exception_only(error)).strip()
            log.exception("pack failed")
            for job in jobs:
                queue.fail(self.factory, job.job_id, job.lease_token, message)
                abandon_trial(self.storage, trial_ids[job.job_id], f"error: {message[:200]}")
            self._forget(jobs)
            return
        metric = spec.success.metric
        for job, record in zip(jobs, records, strict=True):
            self._settle(job, record, trial_ids[job.job_id], metric)
        self._forget(jobs)

    def _on_eval(
        self, trainer: PackTrainer, jobs: list[ClaimedJob], trial_ids: dict[int, int], k: int, point: dict
    ) -> None:
        value = point.get(f"val_{trainer.success_metric}")
        if value is not None:
            report(self.storage, trial_ids[jobs[k].job_id], int(point["step"]), value)

    def _should_stop(self, trainer: PackTrainer, jobs: list[ClaimedJob]) -> bool:
        with self.held.lock:
            gone = self.held.lost | self.held.cancelled
        for k, job in enumerate(jobs):
            if job.job_id in gone:
                trainer.stop_trial(k, "cancelled" if job.job_id in self.held.cancelled else "lost")
        return self.stop_requested.is_set()

    def _settle(self, job: ClaimedJob, record: TrialRecord, trial_id: int, metric: str) -> None:
        """Record one trial's outcome exactly once, or give the job back."""
        token = job.lease_token
        if record.status in ("completed", "succeeded", "diverged"):
            result = record.to_dict() | {
                "device": self.options.device,
                "worker": self.id,
                "attempt": job.attempt,
            }
            if queue.complete(self.factory, job.job_id, token, result):
                record_result(self.storage, trial_id, metric, result)
            else:
                abandon_trial(self.storage, trial_id, "late report rejected")
        elif record.status == "cancelled":
            queue.cancel_job(self.factory, job.job_id, token)
            abandon_trial(self.storage, trial_id, "cancelled")
        elif record.status == "lost":
            abandon_trial(self.storage, trial_id, "lease lost")
        else:  # interrupted by a stop request: another worker will run it again
            queue.release(self.factory, job.job_id, token, "worker stopped")
            abandon_trial(self.storage, trial_id, "released (worker stopping)")

    def _forget(self, jobs: list[ClaimedJob]) -> None:
        with self.held.lock:
            for job in jobs:
                self.held.leases.pop(job.job_id, None)

    def _release_all(self, reason: str) -> None:
        with self.held.lock:
            leases = dict(self.held.leases)
            self.held.leases.clear()
        for job_id, token in leases.items():
            queue.release(self.factory, job_id, token, reason)

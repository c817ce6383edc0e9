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
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.exc import DBAPIError

from studies import queue
from studies.db.models import Engine
from studies.queue import ClaimedJob
from studies.training import PackTrainer
from workers.attempts import Executor, PackAttempt, reap_expired

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


class Worker(Executor):
    def __init__(self, options: WorkerOptions):
        super().__init__(options.database_url, "", options.lease_seconds, options.heartbeat_seconds)
        self.options = options
        self.packs_done = 0
        # Where the time goes, in seconds: "training" is inside PackTrainer.run less the time its
        # callbacks spend writing learning curves ("reporting"); the rest of the wall time is overhead.
        self.seconds: defaultdict[str, float] = defaultdict(float)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self._install_signal_handlers()
        queue.register_worker(
            self.factory, self.id, socket.gethostname(), os.getpid(), self.options.device, self.options.pack
        )
        self.leases.start()
        try:
            while not self.stop_requested.is_set():
                try:
                    with self._timed("claiming"):
                        reap_expired(self.factory, self.storage)
                        jobs = queue.claim(
                            self.factory, self.id, self.options.pack, self.options.lease_seconds
                        )
                except DBAPIError as error:  # e.g. the server restarting: wait, then ask again
                    log.warning("database unavailable (%s); retrying", error.orig)
                    self.stop_requested.wait(self.options.poll_seconds)
                    continue
                if jobs:
                    self._train_pack(jobs)
                    self.packs_done += 1
                    if self.options.max_packs is not None and self.packs_done >= self.options.max_packs:
                        break
                elif self.options.exit_when_idle and queue.unfinished_jobs(self.factory, Engine.QUEUE) == 0:
                    break
                else:
                    self.stop_requested.wait(self.options.poll_seconds)
        finally:
            self.leases.release_all("worker stopping")
            self.leases.stop()
            self.stop_requested.set()
            queue.worker_stopped(self.factory, self.id)
            self.close()

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

    # -- one pack ---------------------------------------------------------------------------
    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def _train_pack(self, jobs: list[ClaimedJob]) -> None:
        attempt = PackAttempt(self.factory, self.storage, jobs, self.id, self.options.device)
        with self._timed("opening"):
            attempt.open()
        self.leases.hold(jobs)
        spec = attempt.spec
        log.info(
            "training %d trials of study %s as one pack on %s", len(jobs), jobs[0].study_id, attempt.device
        )

        def report(points: dict[int, dict[str, float]]) -> None:
            with self._timed("reporting"):
                attempt.report(points)

        try:
            with self._timed("setting up"):
                trainer = PackTrainer(
                    spec.training_config(),
                    [c.trial_params(spec) for c in attempt.cells()],
                    self.options.device,
                )
            reported = self.seconds["reporting"]
            with self._timed("training"):
                records = trainer.run(on_eval=report, should_stop=lambda: self._should_stop(trainer, jobs))
            self.seconds["training"] -= self.seconds["reporting"] - reported
        except Exception as error:
            log.exception("pack failed")
            with self._timed("settling"):
                attempt.fail("".join(traceback.format_exception_only(error)).strip())
        else:
            with self._timed("settling"):
                attempt.settle(records)
        finally:
            self.leases.forget(jobs)

    def _should_stop(self, trainer: PackTrainer, jobs: list[ClaimedJob]) -> bool:
        lost, cancelled = self.leases.lost, self.leases.cancelled
        for k, job in enumerate(jobs):
            if job.job_id in lost | cancelled:
                trainer.stop_trial(k, "cancelled" if job.job_id in cancelled else "lost")
        return self.stop_requested.is_set()

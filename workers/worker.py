"""A queue worker: claim a pack of jobs, train them as one packed run, record each result once.

One worker per device. The loop (`Worker.run`) has explicit exits: a first SIGTERM or SIGINT
finishes the current evaluation interval and gives back what it holds; a second one exits at
once. A SIGKILL loses nothing but time: the leases expire, the reaper requeues the jobs (no
attempt spent), and a late report from the killed attempt would be rejected.

Failures are told apart (`workers.failures`): a trial error spends an attempt; an infrastructure
error gives the jobs back unspent and the worker backs off, and after `max_infra_failures` in a
row it halts (status `halted`, with the reason, in hd_workers) and exits with `EXIT_HALTED`; an
out-of-memory error halves the pack and retries down to one trial. Before claiming anything the
worker trains a tiny model on its device, and exits with `EXIT_DEVICE_UNUSABLE` if it cannot.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from deployment.settings import Settings, setting_default
from studies import queue
from studies.db.models import ExecutorKind, WorkerStatus
from studies.lstm import PackedHDetachLSTM
from studies.lstm._kernel import triton_choice
from studies.queue import ClaimedJob
from studies.training import PackTrainer
from studies.training.graphs import graphs_choice
from workers import faults
from workers.attempts import PackAttempt, reap_expired, sweep_optuna_trials
from workers.executor import Executor, wait_out_infrastructure
from workers.failures import FailureKind, InfrastructureError, classify, one_line, touches_the_device

log = logging.getLogger("hdetach.worker")

EXIT_DEVICE_UNUSABLE = 3  # the device failed its start-up check; nothing was claimed
EXIT_HALTED = 4  # stopped claiming after repeated infrastructure failures
EXIT_DEVICE_LOST = 5  # a CUDA error left the device unusable in this process: start a fresh one
EXIT_DATABASE_UNREACHABLE = 6  # (`hdetach worker`) the database stayed unreachable at start-up

# The loop's phases, each entered through the worker's `phase_hook`: "claiming", "opening",
# "setting up", "training", "reporting" (learning curves, written from inside "training") and
# "settling". The hook does nothing unless a caller installs one (benchmarks/bench_overhead.py
# times the phases with it).
PhaseHook = Callable[[str], AbstractContextManager[object]]
_NOTHING = nullcontext()


def no_phase_hook(phase: str) -> AbstractContextManager[object]:
    return _NOTHING


def free_device_memory() -> None:
    """Hand the memory of what was just dropped back, before a smaller pack is tried."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def check_device(device: str) -> None:
    """Train a tiny packed h-detach LSTM one step on `device`; InfrastructureError if it cannot
    (or if HDETACH_TRITON or HDETACH_CUDA_GRAPHS holds no known choice)."""
    try:
        triton_choice()
        graphs_choice()
    except ValueError as error:
        raise InfrastructureError(str(error)) from error
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise InfrastructureError(f"{device!r} is not a device: {one_line(error)}") from error
    try:
        model = PackedHDetachLSTM(2, 3, 4, p_detach=[0.0, 0.5], device=where)
        output, _ = model(torch.randn(5, 2, 2, 3, device=where))
        output.square().sum().backward()
        if where.type == "cuda":
            torch.cuda.synchronize(where)
    except Exception as error:
        raise InfrastructureError(f"device {device} is not usable: {one_line(error)}") from error


@dataclass
class WorkerOptions:
    database_url: str
    device: str = "cpu"
    pack: int = 8
    lease_seconds: float = setting_default("lease_seconds")
    heartbeat_seconds: float = setting_default("heartbeat_seconds")
    poll_seconds: float = setting_default("poll_seconds")
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    max_packs: int | None = None  # stop after this many packs (tests, benchmarks)
    exit_when_idle: bool = False  # stop when the queue is empty instead of polling
    max_infra_failures: int = 5  # infrastructure failures in a row before the worker halts
    max_backoff_seconds: float = 60.0  # longest wait after an infrastructure failure
    settle_tries: int = 5  # tries at recording a trained pack while the database is away
    database_patience_seconds: float = 120.0  # how long start-up waits for an unreachable database

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> WorkerOptions:
        """The deployment's database and lease timings, with these options."""
        return cls(
            database_url=settings.database_url,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds,
            **options,
        )


class Worker(Executor):
    def __init__(self, options: WorkerOptions):
        super().__init__(
            options.database_url,
            "",
            options.lease_seconds,
            options.heartbeat_seconds,
            options.database_patience_seconds,
        )
        self.options = options
        self.packs_done = 0
        self.device_broken: str | None = None  # the CUDA error after which this process must go
        self.phase_hook: PhaseHook = no_phase_hook

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Work until stopped; the exit code: 0, EXIT_DEVICE_UNUSABLE or EXIT_HALTED."""
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        try:
            check_device(self.options.device)
        except InfrastructureError as error:
            log.error("%s; not claiming any work", error)
            self.close()
            return EXIT_DEVICE_UNUSABLE
        self._install_signal_handlers()
        wait_out_infrastructure(
            lambda: queue.register_worker(
                self.factory,
                self.id,
                socket.gethostname(),
                os.getpid(),
                self.options.device,
                self.options.pack,
            ),
            "registering the worker",
        )
        self.leases.start()
        exit_code = 0
        in_a_row = 0  # infrastructure failures since the last pack that did not have one
        last_sweep = -float("inf")
        try:
            while not self.stop_requested.is_set():
                try:
                    with self.phase_hook("claiming"):
                        if not reap_expired(self.factory, self.storage, self.options.lease_seconds) and (
                            time.monotonic() - last_sweep > self.options.lease_seconds
                        ):
                            sweep_optuna_trials(self.factory, self.storage)  # also at start-up
                            last_sweep = time.monotonic()
                        jobs = queue.claim(
                            self.factory, self.id, self.options.pack, self.options.lease_seconds
                        )
                except Exception as error:  # e.g. the server restarting: wait, then ask again
                    if classify(error) is not FailureKind.INFRASTRUCTURE:
                        raise
                    log.warning("database unavailable (%s); retrying", one_line(error))
                    self.stop_requested.wait(self.options.poll_seconds)
                    continue
                if jobs:
                    failure = self._train_pack(jobs)
                    self.packs_done += 1
                    if self.device_broken:  # CUDA errors are sticky: every later pack would fail
                        log.error(
                            "the device is unusable after %s; exiting for a fresh process", self.device_broken
                        )
                        exit_code = EXIT_DEVICE_LOST
                        break
                    if failure is None:
                        in_a_row = 0
                    else:
                        in_a_row += 1
                        if in_a_row >= self.options.max_infra_failures:
                            self._halt(f"{in_a_row} infrastructure failures in a row, the last: {failure}")
                            exit_code = EXIT_HALTED
                            break
                        self.stop_requested.wait(self._backoff(in_a_row))
                    if self.options.max_packs is not None and self.packs_done >= self.options.max_packs:
                        break
                elif self.options.exit_when_idle and self._queue_is_empty():
                    break
                else:
                    self.stop_requested.wait(self.options.poll_seconds)
        finally:
            self.leases.stop()
            self.stop_requested.set()
            try:
                self.leases.release_all("worker stopping")
                if exit_code != EXIT_HALTED:
                    queue.worker_stopped(self.factory, self.id)
            except Exception as error:  # the leases expire and the reaper hands the jobs back
                if classify(error) is not FailureKind.INFRASTRUCTURE:
                    raise
                log.warning("could not give back jobs or sign off (%s)", one_line(error))
            self.close()
        return exit_code

    def _queue_is_empty(self) -> bool:
        try:
            return queue.unfinished_jobs(self.factory, ExecutorKind.QUEUE) == 0
        except Exception as error:
            if classify(error) is not FailureKind.INFRASTRUCTURE:
                raise
            return False  # asked again after the next claim

    def _backoff(self, in_a_row: int) -> float:
        return min(self.options.max_backoff_seconds, self.options.poll_seconds * 2 ** (in_a_row - 1))

    def _halt(self, reason: str) -> None:
        log.error("halting: %s; no more claims from this worker", reason)
        try:
            queue.set_worker_status(self.factory, self.id, WorkerStatus.HALTED, reason=reason)
        except Exception as error:
            if classify(error) is not FailureKind.INFRASTRUCTURE:
                raise
            log.warning("could not record the halt (%s)", one_line(error))

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
    def _train_pack(self, jobs: list[ClaimedJob]) -> str | None:
        """Train and record one claimed pack; returns the infrastructure error, if there was one."""
        self.leases.hold(jobs)
        try:
            return self._attempt(PackAttempt(self.factory, self.storage, jobs, self.id, self.options.device))
        finally:
            self.leases.forget(jobs)

    def _attempt(self, attempt: PackAttempt) -> str | None:
        """Open, train and record one pack; returns the infrastructure error, if there was one."""
        try:
            records = self._open_and_train(attempt)
        except Exception as error:
            kind, message = classify(error), one_line(error)
            if kind is FailureKind.TRIAL:
                log.error("pack failed: %s", "".join(traceback.format_exception(error)).strip())
            if touches_the_device(error):
                self.device_broken = message
            # The traceback's frames hold the trainer and its activations: let them go, so an
            # out-of-memory pack's halves find the memory it held.
            traceback.clear_frames(error.__traceback__)
        else:
            with self.phase_hook("settling"):
                return self._hand_over(lambda: attempt.settle(records), "recording the pack")
        if kind is FailureKind.OUT_OF_MEMORY and len(attempt.jobs) > 1 and not self.device_broken:
            return self._halve(attempt, message)
        if kind is FailureKind.INFRASTRUCTURE:
            log.warning("infrastructure error, giving the jobs back (no attempt spent): %s", message)
            with self.phase_hook("settling"):
                return self._hand_over(lambda: attempt.give_back(message), "giving the jobs back") or message
        with self.phase_hook("settling"):  # a trial error (an OOM with one trial left, too)
            return self._hand_over(lambda: attempt.fail(message), "recording the failure")

    def _open_and_train(self, attempt: PackAttempt) -> list[Any]:
        jobs = attempt.jobs
        with self.phase_hook("opening"):
            attempt.open()
        spec = attempt.spec
        log.info(
            "training %d trials of study %s as one pack on %s", len(jobs), jobs[0].study_id, attempt.device
        )

        def report(points: dict[int, dict[str, float]]) -> None:
            with self.phase_hook("reporting"):
                attempt.report(points)

        with self.phase_hook("setting up"):
            faults.hit("training", len(jobs))
            trainer = PackTrainer(
                spec.training_config(), [c.trial_params(spec) for c in attempt.cells()], self.options.device
            )
        with self.phase_hook("training"):
            return trainer.run(on_eval=report, should_stop=lambda: self._should_stop(trainer, jobs))

    def _halve(self, attempt: PackAttempt, message: str) -> str | None:
        """Train an out-of-memory pack as two halves, neither spending an attempt."""
        log.warning("out of memory with %d trials (%s): halving the pack", len(attempt.jobs), message)
        free_device_memory()
        halves: list[PackAttempt] = []
        if failure := self._hand_over(
            lambda: halves.extend(attempt.split(f"out of memory, pack halved: {message}")), "halving the pack"
        ):
            return failure
        for k, half in enumerate(halves):
            if failure := self._attempt(half):  # the rest go back unspent, not left to their leases
                for rest in halves[k + 1 :]:
                    self._hand_over(partial(rest.give_back, failure), "giving the jobs back")
                return failure
        return None

    def _hand_over(self, action: Callable[[], Any], what: str) -> str | None:
        """Run a write that ends an attempt (record results, give jobs back, count a failure),
        again while the database is away: the leases are still held, and the heartbeat renews them
        once it is back. Returns the infrastructure error if it never got through: the leases
        then expire and the reaper hands the jobs back, no attempt spent."""
        for tries in range(1, self.options.settle_tries + 1):
            try:
                action()
                return None
            except Exception as error:
                if classify(error) is not FailureKind.INFRASTRUCTURE:
                    raise
                if tries == self.options.settle_tries:
                    log.error("%s failed (%s); its leases will expire", what, one_line(error))
                    return one_line(error)
                log.warning("%s failed (%s); trying again", what, one_line(error))
                time.sleep(self._backoff(tries))
        raise AssertionError("unreachable")

    def _should_stop(self, trainer: PackTrainer, jobs: list[ClaimedJob]) -> bool:
        lost, cancelled = self.leases.lost, self.leases.cancelled
        for k, job in enumerate(jobs):
            if job.job_id in lost | cancelled:
                trainer.stop_trial(k, "cancelled" if job.job_id in cancelled else "lost")
        return self.stop_requested.is_set()

"""Run studies on a Ray cluster: the grid becomes a Ray Tune experiment, the results our usual rows.

The driver (`hdetach ray-run`) claims a study's queued jobs in packs, exactly as a queue worker
would, and holds their leases by heartbeat while Tune runs. Each pack is one Tune trial (a
`grid_search` over the packs' short names, `s<study>-pack<k>`) with its own resource request, e.g.
``{"gpu": 1}`` or a fraction of one. The trial (`workers.ray_trainable`) trains the pack with
`PackTrainer` on whatever device Ray gave it and reports each evaluation as numeric metrics with a
checkpoint; a Tune callback in the driver turns those reports into Optuna intermediate values
and, from the final checkpoint, records each cell's result through the queue, guarded by its
lease as always. So summaries, reports and optuna-dashboard read the same rows whichever
engine ran the study.

Failures: Tune's `FailureConfig` retries a failed pack (max_attempts - 1 times) from its latest
checkpoint; every retry is a new attempt of its jobs (a new Optuna trial, which gets the failed
one's curve up to the checkpoint; the failed one is closed FAIL with the error). When
Tune gives up, the jobs fail through the queue's retry policy. If the driver itself dies, its
leases expire and the reaper hands the jobs back to the queue, where the next driver takes them.
Cancelling a study stops its packs at their next evaluation (a Tune stopper).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from deployment.settings import Settings, setting_default
from studies import queue
from studies.db.models import ExecutorKind
from studies.queue import ClaimedJob
from studies.tracking import intermediate_values, report_values
from workers.attempts import RECORDED, PackAttempt, reap_expired
from workers.executor import Executor
from workers.ray_trainable import cell_labels, points_from_metrics, read_final, train_pack

log = logging.getLogger("hdetach.ray")


# -- in the driver ---------------------------------------------------------------------------
@dataclass
class RayOptions:
    database_url: str
    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray starts
    pack: int = 8  # most cells in one Tune trial
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0})  # per pack
    lease_seconds: float = setting_default("lease_seconds")
    heartbeat_seconds: float = setting_default("heartbeat_seconds")
    poll_seconds: float = setting_default("poll_seconds")
    max_attempts: int = setting_default("max_attempts")  # Tune retries a pack max_attempts - 1 times
    storage_path: str | None = None  # Tune's experiment directory (default: Ray's)
    num_cpus: int | None = None  # for a local Ray only

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RayOptions:
        """The deployment's database, Ray address and storage, lease timings and attempts, with
        these options (an `address` of None among them keeps the deployment's)."""
        address = options.pop("address", None) or settings.ray_address
        return cls(
            database_url=settings.database_url,
            address=address,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds,
            max_attempts=settings.max_attempts,
            storage_path=settings.ray_storage_path,
            **options,
        )


@dataclass
class _Pack:
    name: str  # the Tune trial's name and directory: s<study>-pack<k>
    attempt: PackAttempt
    records: list[dict[str, Any]] | None = None  # from the final checkpoint
    step: int = 0  # the latest reported step
    checkpoint_step: int = 0  # the step of the latest checkpoint, where a retry resumes
    carried: list[tuple[int, int, float]] = field(default_factory=list)  # (pack position, step, value)
    settled: bool = False
    done: int = 0  # cells with a recorded result, once settled
    failed: int = 0  # cells failed, once settled

    @property
    def jobs(self) -> list[ClaimedJob]:
        return self.attempt.jobs

    @property
    def labels(self) -> list[str]:
        return cell_labels(self.attempt.cells())

    def payload(self) -> dict[str, Any]:
        """What the trainable needs (passed by `tune.with_parameters`, so the trial's config holds
        only the pack's name)."""
        cells = [cell.model_dump() for cell in self.attempt.cells()]
        return {"spec_json": self.jobs[0].spec_json, "cells": cells}


@dataclass(frozen=True)
class DrainProgress:
    """Where a drain stands: its cells, and its training steps summed over packs (for an ETA)."""

    experiment: str
    cells: int
    done: int  # cells with a recorded result (diverged ones included)
    failed: int  # cells of packs Tune gave up on
    stopped: int  # cells given back unfinished (cancelled, lost, the driver stopping)
    steps: int
    total_steps: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first report."""
        if self.steps <= 0:
            return None
        return self.elapsed_s * max(0, self.total_steps - self.steps) / self.steps


@dataclass(frozen=True)
class DrainReport:
    packs: int
    jobs: int
    study_ids: tuple[int, ...]


def check_address(address: str | None) -> None:
    """The driver must run on a node of the cluster: Tune's callbacks, which write our rows, run
    where the experiment's controller runs, and under Ray Client (ray://) that is the head."""
    if address and address.startswith("ray://"):
        raise ValueError(
            f"Ray Client addresses ({address}) are not supported: run `hdetach ray-run` on a node of "
            "the cluster (e.g. the head) with --address auto or the head's host:6379"
        )


def _trial_error(trial: Any) -> str:
    """The last line of the trial's error file (the exception), or a generic message."""
    try:
        text = Path(trial.error_file).read_text().strip()
        return text.splitlines()[-1] if text else "trial failed on Ray"
    except (OSError, TypeError):
        return "trial failed on Ray"


class RayDriver(Executor):
    """Claims jobs for Ray, runs them as Tune experiments, and records what they report."""

    def __init__(self, options: RayOptions, on_progress: Callable[[DrainProgress], None] | None = None):
        super().__init__(options.database_url, "ray-", options.lease_seconds, options.heartbeat_seconds)
        self.options = options
        self.on_progress = on_progress  # told after every report and every pack that ends
        self.dashboard_url: str | None = None

    def __enter__(self) -> RayDriver:
        address = self.options.address or os.environ.get("RAY_ADDRESS") or None
        check_address(address)
        context = ray.init(
            address=address,
            num_cpus=None if address else self.options.num_cpus,
            include_dashboard=None,  # a local Ray starts it when its dependencies (ray[default]) are there
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )
        if context.dashboard_url:
            self.dashboard_url = f"http://{context.dashboard_url}"
            log.info("Ray dashboard: %s", self.dashboard_url)
        else:
            log.info("Ray dashboard: none (this Ray runs without it; it needs ray[default])")
        host, pack = socket.gethostname(), self.options.pack
        queue.register_worker(self.factory, self.id, host, os.getpid(), f"ray:{address or 'local'}", pack)
        self.leases.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leases.release_all("ray driver stopping")
        self.leases.stop()
        queue.worker_stopped(self.factory, self.id)
        ray.shutdown()
        self.close()

    # -- what to run ------------------------------------------------------------------------
    def claim_all(self, study_id: int | None) -> list[list[ClaimedJob]]:
        """Every queued job of `study_id` (any engine), or of every Ray study, in packs."""
        engine = None if study_id is not None else ExecutorKind.RAY
        packs = []
        while jobs := queue.claim(
            self.factory,
            self.id,
            self.options.pack,
            self.options.lease_seconds,
            engine=engine,
            study_id=study_id,
        ):
            self.leases.hold(jobs)
            packs.append(jobs)
        return packs

    def drain(self, study_id: int | None = None) -> DrainReport:
        """Run what is queued (for `study_id`, or for every Ray study) as one Tune experiment."""
        reap_expired(self.factory, self.storage, self.options.lease_seconds)
        claimed = self.claim_all(study_id)
        if not claimed:
            return DrainReport(0, 0, ())
        attempts = [PackAttempt(self.factory, self.storage, jobs, self.id, "ray") for jobs in claimed]
        packs = [_Pack(f"s{a.jobs[0].study_id}-pack{k}", a) for k, a in enumerate(attempts)]
        studies = tuple(sorted({job.study_id for jobs in claimed for job in jobs}))
        log.info(
            "running %d jobs of studies %s on Ray as %d packs", sum(map(len, claimed)), studies, len(packs)
        )
        try:
            self._fit(packs, name=f"hdetach-{'-'.join(map(str, studies))}-{uuid.uuid4().hex[:6]}")
        finally:
            for pack in packs:  # whatever Tune did not finish goes back to the queue
                if not pack.settled:
                    pack.attempt.settle([{"status": "interrupted"}] * len(pack.jobs))
                self.leases.forget(pack.jobs)
        return DrainReport(len(packs), sum(len(p.jobs) for p in packs), studies)

    def run_study(self, study_id: int) -> DrainReport:
        """Drain `study_id` until none of its jobs is queued (a pack Tune gave up on may be queued
        again by the retry policy, if its jobs allow more attempts than Tune made)."""
        packs = jobs = 0
        while not self.stop_requested.is_set() and (report := self.drain(study_id)).jobs:
            packs, jobs = packs + report.packs, jobs + report.jobs
        return DrainReport(packs, jobs, (study_id,) if jobs else ())

    def watch(self) -> None:
        """Drain the Ray studies' queue until stopped (SIGTERM)."""
        while not self.stop_requested.is_set():
            if not self.drain().jobs:
                self.stop_requested.wait(self.options.poll_seconds)

    def _fit(self, packs: list[_Pack], name: str) -> None:
        bridge = _Bridge(self, packs, name)
        resources = {k.lower(): v for k, v in self.options.resources.items()}
        trainable = tune.with_parameters(train_pack, packs={p.name: p.payload() for p in packs})
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"pack": tune.grid_search([p.name for p in packs])},
            tune_config=tune.TuneConfig(
                reuse_actors=False, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=self.options.storage_path,
                callbacks=[bridge],
                stop=bridge.stopper(),
                failure_config=tune.FailureConfig(max_failures=max(0, self.options.max_attempts - 1)),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # a retry needs only the latest
                verbose=0,
            ),
        )
        # num_to_keep makes Tune snapshot its experiment state at each checkpoint (small here), and
        # warn about it every few seconds unless told not to
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        bridge.tell_progress()
        tuner.fit()


def _trial_name(trial: Any) -> str:
    """The pack's short name (unique within the experiment), for the trial and its directory."""
    return str(trial.config["pack"])


class _Bridge(tune.Callback):
    """Tune's events, written into our tables and Optuna (runs in the driver process)."""

    def __init__(self, driver: RayDriver, packs: list[_Pack], experiment: str):
        self.driver, self.experiment = driver, experiment
        self.packs = {pack.name: pack for pack in packs}
        self.by_trial: dict[str, _Pack] = {}
        self.started = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment directory (for Tuner.restore); the bridge
        # holds this process's database connections, so a restored experiment gets an inert one.
        return {"driver": None, "packs": {}, "by_trial": {}, "experiment": self.experiment, "started": 0.0}

    def _pack(self, trial: Any) -> _Pack:
        pack = self.packs[trial.config["pack"]]
        self.by_trial[trial.trial_id] = pack
        return pack

    def tell_progress(self) -> None:
        if self.driver.on_progress is None:
            return
        packs = self.packs.values()
        self.driver.on_progress(
            DrainProgress(
                experiment=self.experiment,
                cells=sum(len(p.jobs) for p in packs),
                done=sum(p.done for p in packs),
                failed=sum(p.failed for p in packs),
                stopped=sum(len(p.jobs) - p.done - p.failed for p in packs if p.settled),
                steps=sum(p.step for p in packs),
                total_steps=sum(p.attempt.spec.budget.steps for p in packs),
                elapsed_s=time.monotonic() - self.started,
            )
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        pack.attempt.open()
        if pack.carried:  # a retry: its trials get the curve its checkpoint holds
            ids = [pack.attempt.trial_ids[job.job_id] for job in pack.jobs]
            report_values(self.driver.storage, [(ids[k], step, value) for k, step, value in pack.carried])
            pack.carried = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        pack = self._pack(trial)
        pack.step = int(result["step"])
        pack.attempt.report(points_from_metrics(result, pack.labels))
        self.tell_progress()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # Tune logs and swallows what this raises: a final checkpoint that cannot be read leaves the
        # pack without records, so its jobs are given back rather than recorded wrong.
        pack = self._pack(trial)
        pack.checkpoint_step = int(trial.last_result["step"])  # the result this checkpoint came with
        final = read_final(checkpoint)
        if final is not None:
            pack.attempt.device = f"ray/{final['device']}"
            pack.records = final["records"]

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        error = _trial_error(trial)
        log.warning(
            "pack %s failed on Ray (%s): retrying from step %d", pack.name, error, pack.checkpoint_step
        )
        pack.carried = [
            (k, step, value)
            for k, job in enumerate(pack.jobs)
            if job.job_id in pack.attempt.trial_ids
            for step, value in intermediate_values(self.driver.storage, pack.attempt.trial_ids[job.job_id])
            if step <= pack.checkpoint_step
        ]
        pack.records, pack.step = None, pack.checkpoint_step
        pack.attempt = pack.attempt.next_attempt(error)
        self.driver.leases.hold(pack.jobs)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        error = _trial_error(trial)
        log.error("pack %s failed on Ray (%s): giving up", pack.name, error)
        pack.attempt.fail(error)
        pack.settled, pack.failed = True, len(pack.jobs)
        self.tell_progress()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        if pack.records is not None:
            pack.attempt.settle(pack.records)
            pack.done = sum(r["status"] in RECORDED for r in pack.records)
        else:  # stopped before the end: a cancelled study, lost leases, or the driver stopping
            cancelled, lost = self.driver.leases.cancelled, self.driver.leases.lost
            pack.attempt.settle(
                [
                    {
                        "status": "cancelled"
                        if j.job_id in cancelled
                        else "lost"
                        if j.job_id in lost
                        else "interrupted"
                    }
                    for j in pack.jobs
                ]
            )
        pack.settled = True
        self.tell_progress()

    def stopper(self) -> tune.Stopper:
        bridge = self

        class StopCancelled(tune.Stopper):
            """Stops a pack whose every job was cancelled or lost, and everything when the driver stops."""

            def __call__(self, trial_id: str, result: dict) -> bool:
                pack = bridge.by_trial.get(trial_id)
                if pack is None:
                    return False
                gone = bridge.driver.leases.cancelled | bridge.driver.leases.lost
                return all(job.job_id in gone for job in pack.jobs)

            def stop_all(self) -> bool:
                return bridge.driver.stop_requested.is_set()

        return StopCancelled()

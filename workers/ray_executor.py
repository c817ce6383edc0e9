"""Run studies on a Ray cluster: the grid becomes a Ray Tune experiment, the results our usual rows.

The driver (`hdetach ray-run`) claims a study's queued jobs in packs, exactly as a queue worker
would, and holds their leases by heartbeat while Tune runs. Each pack is one Tune trial (a
`grid_search` over the packs) with its own resource request, e.g. ``{"gpu": 1}`` or a fraction of
one. The trial trains the pack with `PackTrainer` on whatever device Ray gave it and reports each
evaluation through `tune.report`; a Tune callback in the driver turns those reports into Optuna
intermediate values and, at the end, records each cell's result through the queue, guarded by
its lease as always. So summaries, reports and optuna-dashboard read the same rows whichever
engine ran the study.

Failures: Tune's `FailureConfig` retries a failed pack (max_attempts - 1 times); every retry is a
new attempt of its jobs (a new Optuna trial; the failed one is closed FAIL with the error). When
Tune gives up, the jobs fail through the queue's retry policy. If the driver itself dies, its
leases expire and the reaper hands the jobs back to the queue, where the next driver takes them.
Cancelling a study stops its packs at their next evaluation (a Tune stopper).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from deployment.settings import Settings, setting_default
from studies import queue
from studies.db.models import ExecutorKind
from studies.queue import ClaimedJob
from studies.spec import GridCell, StudySpec
from workers.attempts import PackAttempt, reap_expired
from workers.executor import Executor

log = logging.getLogger("hdetach.ray")

EVALS_KEY = "hdetach_evals"  # JSON: {pack position: curve point} since the previous report
RECORDS_KEY = "hdetach_records"  # JSON: the pack's TrialRecords, in the final report only
DEVICE_KEY = "hdetach_device"


# -- inside a Ray worker ---------------------------------------------------------------------
def train_pack(config: dict[str, Any]) -> None:
    """The Tune trainable: one pack of cells, trained on the device Ray assigned."""
    import torch

    from studies.training import PackTrainer

    pack = config["pack"]
    spec = StudySpec.model_validate_json(pack["spec_json"])
    cells = [GridCell(**cell) for cell in pack["cells"]]
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        torch.set_num_threads(max(1, cpus))
    trainer = PackTrainer(spec.training_config(), [c.trial_params(spec) for c in cells], device)
    evals: dict[int, dict[str, float]] = {}

    def report_evaluation() -> bool:
        tune.report({"step": trainer.step, EVALS_KEY: json.dumps(evals), DEVICE_KEY: device})
        evals.clear()
        return False  # Tune stops the trial itself (see _Bridge.should_stop)

    records = trainer.run(on_eval=evals.update, should_stop=report_evaluation)
    tune.report(
        {
            "step": trainer.step,
            EVALS_KEY: "{}",
            RECORDS_KEY: json.dumps([r.to_dict() for r in records]),
            DEVICE_KEY: device,
        }
    )


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
    attempt: PackAttempt
    records: list[dict[str, Any]] | None = None
    settled: bool = False

    @property
    def jobs(self) -> list[ClaimedJob]:
        return self.attempt.jobs

    def tune_config(self, index: int) -> dict[str, Any]:
        cells = [cell.model_dump() for cell in self.attempt.cells()]
        return {"index": index, "spec_json": self.jobs[0].spec_json, "cells": cells}


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

    def __init__(self, options: RayOptions):
        super().__init__(options.database_url, "ray-", options.lease_seconds, options.heartbeat_seconds)
        self.options = options

    def __enter__(self) -> RayDriver:
        address = self.options.address or os.environ.get("RAY_ADDRESS") or None
        check_address(address)
        ray.init(
            address=address,
            num_cpus=None if address else self.options.num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )
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
        packs = [_Pack(PackAttempt(self.factory, self.storage, jobs, self.id, "ray")) for jobs in claimed]
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
        bridge = _Bridge(self, packs)
        resources = {k.lower(): v for k, v in self.options.resources.items()}
        tuner = tune.Tuner(
            tune.with_resources(train_pack, resources),
            param_space={"pack": tune.grid_search([p.tune_config(i) for i, p in enumerate(packs)])},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=tune.RunConfig(
                name=name,
                storage_path=self.options.storage_path,
                callbacks=[bridge],
                stop=bridge.stopper(),
                failure_config=tune.FailureConfig(max_failures=max(0, self.options.max_attempts - 1)),
                verbose=0,
            ),
        )
        tuner.fit()


class _Bridge(tune.Callback):
    """Tune's events, written into our tables and Optuna (runs in the driver process)."""

    def __init__(self, driver: RayDriver, packs: list[_Pack]):
        self.driver, self.packs = driver, packs
        self.by_trial: dict[str, _Pack] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment directory (for Tuner.restore); the bridge
        # holds this process's database connections, so a restored experiment gets an inert one.
        return {"driver": None, "packs": [], "by_trial": {}}

    def _pack(self, trial: Any) -> _Pack:
        pack = self.packs[trial.config["pack"]["index"]]
        self.by_trial[trial.trial_id] = pack
        return pack

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._pack(trial).attempt.open()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        pack = self._pack(trial)
        if DEVICE_KEY in result:
            pack.attempt.device = f"ray/{result[DEVICE_KEY]}"
        points = json.loads(result.get(EVALS_KEY, "{}"))
        pack.attempt.report({int(k): point for k, point in points.items()})
        if RECORDS_KEY in result:
            pack.records = json.loads(result[RECORDS_KEY])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        error = _trial_error(trial)
        log.warning("pack %s failed on Ray (%s): retrying", trial.trial_id, error)
        pack.attempt = pack.attempt.next_attempt(error)
        self.driver.leases.hold(pack.jobs)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        error = _trial_error(trial)
        log.error("pack %s failed on Ray (%s): giving up", trial.trial_id, error)
        pack.attempt.fail(error)
        pack.settled = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pack = self._pack(trial)
        if pack.records is not None:
            pack.attempt.settle(pack.records)
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

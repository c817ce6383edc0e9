"""Chaos run: real workers SIGKILLed at random moments and their database connections dropped while
a study runs; then every cell must be recorded exactly once, in hd_jobs and in its own Optuna
study, no Optuna trial left RUNNING, and no attempt spent (no trial here ever fails on its own).

Used by tests/workers/test_chaos.py; also a script that prints what it did and writes JSON:
    .venv/bin/python -m tests.workers.chaos --backend postgres --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from tests.service.conftest import output, start

SPEC = {
    "name": "chaos",
    "task": {"name": "copying", "T": 3, "n_val": 16, "n_test": 16},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.001, 0.003, 0.01],
    "seeds": [1, 2, 3, 4],
    "budget": {"steps": 300, "eval_every": 50, "batch_size": 4, "eval_batch_size": 16},
}
ENV = {
    "HDETACH_LEASE_SECONDS": "2",
    "HDETACH_HEARTBEAT_SECONDS": "0.4",
    "HDETACH_POLL_SECONDS": "0.1",
    # on top of the real drops: now and then a curve write fails as a dropped connection would
    "HDETACH_TEST_FAULT": "curve-write:db-error:0.03",
}


@dataclass
class ChaosReport:
    backend: str
    cells: int
    seconds: float = 0.0
    kills: int = 0
    kills_holding_jobs: int = 0  # victims that held leased jobs (mid-open, training or settling)
    drop_rounds: int = 0
    connections_dropped: int = 0
    worker_exits: list[str] = field(default_factory=list)  # exits nobody asked for: code and last line
    given_back: int = 0  # jobs handed back after an infrastructure error
    lost_leases: int = 0
    problems: list[str] = field(default_factory=list)


def _start(url: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "hdetach", "worker", "--database-url", url, "--threads", "1", "--pack", "4"]
    return start([*cmd, *extra], ENV)


def _ended(proc: subprocess.Popen[str]) -> str:
    """The last line of what an exited worker printed."""
    lines = output(proc).strip().splitlines()
    proc.log.close()  # type: ignore[attr-defined]
    return lines[-1] if lines else ""


def _drop_connections(database: str) -> int:
    import psycopg

    from tests.conftest import POSTGRES_ADMIN

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def _pids_holding_jobs(factory: Any, study_id: int) -> set[int]:
    """Worker ids are hostname-pid-suffix."""
    from studies import queue

    return {
        int(job.worker_id.rsplit("-", 2)[1])
        for job in queue.list_jobs(factory, study_id)
        if job.state == "running" and job.worker_id
    }


@contextmanager
def _database(backend: str):
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'chaos.db'}", None
        return
    from tests.conftest import _drop_postgres_database, _fresh_postgres_database

    name, url = _fresh_postgres_database()
    try:
        yield url, name
    finally:
        _drop_postgres_database(name)


def run_chaos(
    backend: str, chaos_seconds: float = 20.0, workers: int = 3, seed: int = 0, seeds: int = 4
) -> ChaosReport:
    """`seeds` sets the grid: 2 variants x 3 learning rates x `seeds` cells."""
    from deployment.backend import Backend
    from deployment.settings import Settings
    from studies import queue
    from studies.db.engine import make_engine, session_factory
    from studies.spec import StudySpec
    from studies.tracking import open_storage

    rng = random.Random(seed)
    spec = StudySpec.model_validate({**SPEC, "seeds": list(range(1, seeds + 1))})
    with _database(backend) as (url, pg_name):
        with Backend(Settings(database_url=url)) as backend_handle:
            study_id = backend_handle.submit(spec.model_dump(mode="json"))
        report = ChaosReport(backend, cells=len(spec.cells()))
        engine = make_engine(url)  # pre-ping: the harness's own connections survive the drops
        factory = session_factory(engine)
        procs = [_start(url) for _ in range(workers)]
        started = time.monotonic()
        # the chaos lasts chaos_seconds from the first claim: on a loaded machine workers can take
        # longer than that to start, and chaos among workers that hold nothing proves little
        first_claim: float | None = None
        try:
            while queue.get_study(factory, study_id).status not in ("done", "failed", "cancelled"):
                elapsed = time.monotonic() - started
                if first_claim is None and _pids_holding_jobs(factory, study_id):
                    first_claim = time.monotonic()
                if elapsed > chaos_seconds + 240:
                    report.problems.append("the study did not finish")
                    break
                time.sleep(rng.uniform(0.3, 1.2))
                for k, proc in enumerate(procs):  # a supervisor: restart whatever exited
                    if proc.poll() is not None:
                        report.worker_exits.append(f"{proc.returncode}: {_ended(proc)}")
                        procs[k] = _start(url)
                if first_claim is not None and time.monotonic() - first_claim > chaos_seconds:
                    continue  # let the study finish in peace
                if pg_name is not None and rng.random() < 0.35:
                    report.drop_rounds += 1
                    report.connections_dropped += _drop_connections(pg_name)
                else:
                    # mostly a worker that holds jobs (opening, training or settling a pack); now
                    # and then any worker, starting up or claiming
                    holding = _pids_holding_jobs(factory, study_id)
                    busy = [k for k, proc in enumerate(procs) if proc.pid in holding]
                    if busy and rng.random() < 0.7:
                        k = rng.choice(busy)
                    elif rng.random() < 0.15:
                        k = rng.randrange(len(procs))
                    else:
                        continue
                    report.kills_holding_jobs += procs[k].pid in holding
                    procs[k].send_signal(signal.SIGKILL)
                    procs[k].wait()
                    _ended(procs[k])
                    report.kills += 1
                    procs[k] = _start(url)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.returncode not in (0, -signal.SIGTERM):
                    report.worker_exits.append(f"{proc.returncode} at the end: {_ended(proc)}")
                else:
                    _ended(proc)
        # the next worker's first sweep (a deployment's workers sweep every lease period); it
        # finds the queue empty and leaves
        sweeper = _start(url, "--exit-when-idle")
        if sweeper.wait(timeout=120) != 0:
            report.problems.append(f"the last worker exited with {sweeper.returncode}")
        _ended(sweeper)
        report.seconds = round(time.monotonic() - started, 1)

        jobs = queue.list_jobs(factory, study_id)
        study = queue.get_study(factory, study_id)
        report.given_back = sum("infrastructure" in (j.last_error or "") for j in jobs)
        report.lost_leases = sum(j.lost_leases for j in jobs)
        if study.status != "done":
            report.problems.append(f"study {study.status}")
        for job in jobs:
            if (job.state, job.attempts) != ("done", 1):
                report.problems.append(f"cell {job.cell_index}: {job.state} after {job.attempts} attempts")
        storage = open_storage(url)
        try:
            trials = storage.get_all_trials(storage.get_study_id_from_name(study.optuna_study_name))
        finally:
            storage.engine.dispose()
        engine.dispose()
        recorded = Counter(t.user_attrs["cell"] for t in trials if t.user_attrs.get("recorded"))
        if recorded != Counter(range(report.cells)):
            report.problems.append(f"recorded Optuna trials per cell: {dict(recorded)}")
        if running := [t.number for t in trials if t.state == TrialState.RUNNING]:
            report.problems.append(f"Optuna trials left RUNNING: {running}")
        by_id = {t._trial_id: t for t in trials}
        for job in jobs:
            trial = by_id.get(job.optuna_trial_id or -1)
            if (
                trial is None
                or not trial.user_attrs.get("recorded")
                or trial.user_attrs["cell"] != job.cell_index
            ):
                report.problems.append(f"cell {job.cell_index}: its job does not point at its recorded trial")
        return report


def _as_json(report: ChaosReport) -> dict[str, Any]:
    return asdict(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the chaos lasts")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=4, help="trial seeds: the grid is 6 x seeds cells")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    report = run_chaos(args.backend, args.seconds, args.workers, args.seed, args.seeds)
    data = _as_json(report)
    for key, value in data.items():
        print(f"{key:>20}: {value}")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()

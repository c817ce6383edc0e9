"""Real worker processes draining a study, on SQLite and PostgreSQL: exactly once, even after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from deployment.backend import Backend
from deployment.settings import Settings
from studies import queue
from studies.db.engine import make_engine, session_factory
from studies.tracking import open_storage

TINY = {
    "name": "tiny",
    "task": {"name": "copying", "T": 3, "n_val": 16, "n_test": 16},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.001, 0.003, 0.01],
    "seeds": [1, 2],
    "budget": {"steps": 6, "eval_every": 3, "batch_size": 4, "eval_batch_size": 16},
}


def start_worker(url: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "hdetach", "worker", "--database-url", url, "--threads", "1", *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )


def recorded_trials_per_cell(url: str, optuna_name: str) -> tuple[Counter[int], list]:
    storage = open_storage(url)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(optuna_name))
    finally:
        storage.engine.dispose()
    recorded = Counter(t.user_attrs["cell"] for t in trials if t.user_attrs.get("recorded"))
    return recorded, trials


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def test_several_workers_drain_a_study_exactly_once(database_url, factory):
    with Backend(Settings(database_url=database_url)) as backend:
        study_id = backend.submit(TINY)
    workers = [start_worker(database_url, "--pack", "2", "--exit-when-idle") for _ in range(3)]
    for w in workers:
        out, _ = w.communicate(timeout=240)
        assert w.returncode == 0, out
    jobs = queue.list_jobs(factory, study_id)
    assert len(jobs) == 12 and all(j.state == "done" and j.attempts == 1 for j in jobs)
    assert queue.get_study(factory, study_id).status == "done"
    recorded, trials = recorded_trials_per_cell(
        database_url, queue.get_study(factory, study_id).optuna_study_name
    )
    assert recorded == Counter(range(12))
    assert len(trials) == 12
    result = json.loads(jobs[0].result_json)
    assert result["status"] == "completed" and "accuracy" in result["final"] and len(result["curve"]) == 2


def test_sigkilled_worker_loses_nothing(database_url, factory):
    spec = {
        **TINY,
        "name": "crash",
        "learning_rates": [0.001],
        "seeds": [1],
        "budget": {"steps": 4000, "eval_every": 50, "batch_size": 4, "eval_batch_size": 16},
    }
    with Backend(Settings(database_url=database_url)) as backend:
        study_id = backend.submit(spec)
    fast_lease = {
        "HDETACH_LEASE_SECONDS": "3",
        "HDETACH_HEARTBEAT_SECONDS": "0.5",
        "HDETACH_POLL_SECONDS": "0.5",
    }
    victim = start_worker(database_url, "--pack", "4", env=fast_lease)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = queue.job_counts(factory, study_id)
        if counts.get("running", 0) == 2:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # mid-trial: the first evaluations have been reported
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)  # reaps the process and closes its pipe
    survivor = start_worker(database_url, "--pack", "4", "--exit-when-idle", env=fast_lease)
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out
    jobs = queue.list_jobs(factory, study_id)
    # a killed worker is an infrastructure failure: the lost lease is counted, no attempt spent
    assert [(j.state, j.attempts, j.lost_leases) for j in jobs] == [("done", 1, 1)] * 2
    recorded, trials = recorded_trials_per_cell(
        database_url, queue.get_study(factory, study_id).optuna_study_name
    )
    assert recorded == Counter(range(2))
    killed = [t for t in trials if not t.user_attrs.get("recorded")]
    assert len(killed) == 2 and all(
        t.state.name == "FAIL" and t.user_attrs["outcome"] == "lease expired" for t in killed
    )


@pytest.mark.postgres
def test_worker_survives_the_server_dropping_its_connections():
    """After pg_terminate_backend (as in a server restart), the idle worker reconnects and works on."""
    import threading

    import psycopg

    from tests.conftest import POSTGRES_ADMIN, _drop_postgres_database, _fresh_postgres_database
    from workers.worker import Worker, WorkerOptions

    name, url = _fresh_postgres_database()
    worker = Worker(
        WorkerOptions(database_url=url, pack=4, threads=1, poll_seconds=0.2, heartbeat_seconds=0.2)
    )
    thread = threading.Thread(target=worker.run)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not queue.list_workers(worker.factory):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # a few idle claims, so the pool holds connections
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
        assert dropped is not None and dropped[0] > 0
        with Backend(Settings(database_url=url)) as backend:
            study_id = backend.submit({**TINY, "name": "after-drop"})
            while queue.get_study(backend.factory, study_id).status != "done":
                assert time.monotonic() < deadline + 60 and thread.is_alive()
                time.sleep(0.2)
        assert thread.is_alive()
    finally:
        worker.stop_requested.set()
        thread.join(timeout=60)
        _drop_postgres_database(name)

"""`hdetach health worker`, the worker containers' healthcheck, as a real process on SQLite and
PostgreSQL: healthy with a live worker from this host, unhealthy (exit 1, one line) otherwise."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

from sqlalchemy import update

from studies import queue
from studies.db.engine import run_transaction, upgrade
from studies.db.models import Worker, WorkerStatus, utcnow
from tests.workers.test_worker_processes import factory, start_worker

__all__ = ["factory"]  # the fixture, shared with test_worker_processes

HOST = socket.gethostname()


def health(url: str, *extra: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "hdetach", "health", "worker", "--database-url", url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HDETACH_HEARTBEAT_SECONDS": "10"},  # default --max-age: 30 s
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    return result.returncode, lines[0]


def set_heartbeat_back(factory, worker_id: str, seconds: float) -> None:
    def work(session) -> None:
        session.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(last_heartbeat=utcnow() - timedelta(seconds=seconds))
        )

    run_transaction(factory, work)


def test_health_follows_the_workers_of_this_host(database_url, factory):
    upgrade(database_url)
    assert health(database_url) == (1, f"unhealthy: no worker registered from host {HOST}")
    queue.register_worker(factory, "elsewhere-1-abc", "elsewhere", 1, "cuda:0", 8)  # another host's
    assert health(database_url) == (1, f"unhealthy: no worker registered from host {HOST}")

    worker = start_worker(
        database_url, env={"HDETACH_HEARTBEAT_SECONDS": "0.5", "HDETACH_POLL_SECONDS": "0.2"}
    )
    try:
        deadline = time.monotonic() + 60
        while not queue.list_workers(factory, hostname=HOST):
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
        (live,) = queue.list_workers(factory, hostname=HOST)
        code, line = health(database_url)
        assert code == 0 and line.startswith(f"healthy: 1 worker(s) running on host {HOST}"), line

        worker.send_signal(signal.SIGSTOP)  # no more heartbeats
        try:
            set_heartbeat_back(factory, live.id, 100)
            code, line = health(database_url)
            assert code == 1 and line.startswith(f"unhealthy: no live worker from host {HOST}"), line
            old = rf"worker {live.id} \(cpu, pid {worker.pid}\) last heartbeat 10\d s old \(max 30 s\)$"
            assert re.search(old, line), line
            assert health(database_url, "--max-age", "200")[0] == 0
        finally:
            worker.send_signal(signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    code, line = health(database_url)
    assert code == 1 and re.search(
        rf"worker {live.id} \(cpu, pid {worker.pid}\) stopped, last heartbeat \d+ s ago$", line
    ), line

    queue.register_worker(factory, f"{HOST}-7-halted", HOST, 7, "cuda:1", 8)
    queue.set_worker_status(
        factory, f"{HOST}-7-halted", WorkerStatus.HALTED, reason="5 infrastructure failures in a row"
    )
    code, line = health(database_url)
    assert code == 1 and line == (
        f"unhealthy: no live worker from host {HOST}; the newest (and 1 older): "
        f"worker {HOST}-7-halted (cuda:1, pid 7) halted: 5 infrastructure failures in a row"
    )


def test_health_of_a_missing_or_silent_database_is_a_quick_1(tmp_path):
    assert health(f"sqlite:///{tmp_path / 'none.db'}") == (
        1,
        f"unhealthy: cannot read the workers from the database: FileNotFoundError: no database file at "
        f"{tmp_path / 'none.db'}",
    )
    assert not (tmp_path / "none.db").exists()  # not created by looking
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    try:
        port = silent.getsockname()[1]
        started = time.monotonic()
        code, line = health(f"postgresql://postgres@127.0.0.1:{port}/x", "--timeout", "1")
        assert code == 1 and line.startswith("unhealthy: cannot read the workers from the database"), line
        assert time.monotonic() - started < 15
    finally:
        silent.close()

"""`hdetach worker --device all | a,b | --per-device N`: one supervisor, real worker processes, on
SQLite and PostgreSQL; and the supervisor's rules (devices, back-off, exit code) on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from deployment.backend import Backend
from deployment.settings import Settings
from studies import queue
from tests.workers.test_worker_processes import TINY, factory, recorded_trials_per_cell, start_worker
from workers.supervisor import (
    NoDevicesError,
    Supervisor,
    child_command,
    combined_exit_code,
    expand_devices,
    needs_supervisor,
)

__all__ = ["factory"]  # the fixture, shared with test_worker_processes

FAST = {"HDETACH_LEASE_SECONDS": "3", "HDETACH_HEARTBEAT_SECONDS": "0.5", "HDETACH_POLL_SECONDS": "0.2"}
TWO_CELLS = {**TINY, "learning_rates": [0.001], "seeds": [1]}  # vanilla and h-detach: 2 cells


def submit(url: str, spec: dict) -> int:
    with Backend(Settings(database_url=url)) as backend:
        return backend.submit(spec)


def wait_for(condition, seconds: float, what: str, process: subprocess.Popen[str] | None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            out, _ = process.communicate()
            raise AssertionError(f"exited {process.returncode} while waiting for {what}: {out}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def list_workers_quietly(factory) -> list:
    """The workers, or none while the database is still being created."""
    try:
        return list(queue.list_workers(factory))
    except OperationalError:
        return []


def supervisor_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "hdetach.supervisor" in line]


# -- real processes -----------------------------------------------------------------------------
def test_two_cpu_children_drain_a_study_exactly_once(database_url, factory):
    study_id = submit(database_url, TINY)
    supervisor = start_worker(database_url, "--device", "cpu,cpu", "--pack", "2", "--exit-when-idle")
    out, _ = supervisor.communicate(timeout=240)
    assert supervisor.returncode == 0, out
    jobs = queue.list_jobs(factory, study_id)
    assert [(j.state, j.attempts) for j in jobs] == [("done", 1)] * 12
    recorded, trials = recorded_trials_per_cell(
        database_url, queue.get_study(factory, study_id).optuna_study_name
    )
    assert recorded == Counter(range(12)) and len(trials) == 12
    workers = queue.list_workers(factory)
    assert len({w.pid for w in workers}) == 2 and {(w.device, w.status) for w in workers} == {
        ("cpu", "stopped")
    }
    lines = supervisor_lines(out)
    started = [line for line in lines if "started worker" in line]
    assert len(started) == 2 and all(" on cpu (pid " in line for line in started)
    assert sum("exited 0" in line and "not restarted" in line for line in lines) == 2
    assert "restart" not in "".join(line for line in lines if "not restarted" not in line)


def test_a_killed_child_is_restarted_and_the_study_finishes_once(database_url, factory):
    spec = {**TWO_CELLS, "name": "restart", "budget": {**TINY["budget"], "steps": 2000, "eval_every": 50}}
    study_id = submit(database_url, spec)
    supervisor = start_worker(
        database_url, "--device", "cpu,cpu", "--pack", "1", "--exit-when-idle", env=FAST
    )
    try:
        wait_for(
            lambda: queue.job_counts(factory, study_id).get("running", 0) == 2,
            90,
            "two running jobs",
            supervisor,
        )
        time.sleep(1.0)  # mid-trial
        first = {w.pid for w in queue.list_workers(factory)}
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        out, _ = supervisor.communicate(timeout=240)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, out  # the restarted child recovered the slot
    pids = {w.pid for w in queue.list_workers(factory)}
    assert len(pids) == 3 and first < pids  # a new worker registered
    (new_pid,) = pids - first
    lines = supervisor_lines(out)
    assert any(
        f"(pid {victim}) was killed by signal 9" in line and "restarting in 1.0 s" in line for line in lines
    )
    assert any("restarted worker" in line and f"on cpu (pid {new_pid})" in line for line in lines)
    jobs = queue.list_jobs(factory, study_id)
    assert [(j.state, j.attempts) for j in jobs] == [("done", 1)] * 2
    assert sorted(j.lost_leases for j in jobs) == [0, 1]
    recorded, trials = recorded_trials_per_cell(
        database_url, queue.get_study(factory, study_id).optuna_study_name
    )
    assert recorded == Counter(range(2))
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_sigterm_to_the_supervisor_stops_every_child_gracefully(database_url, factory):
    spec = {**TWO_CELLS, "name": "long", "budget": {**TINY["budget"], "steps": 1_000_000, "eval_every": 20}}
    study_id = submit(database_url, spec)
    supervisor = start_worker(database_url, "--device", "cpu,cpu", "--pack", "1", env=FAST)
    try:
        wait_for(
            lambda: queue.job_counts(factory, study_id).get("running", 0) == 2,
            90,
            "two running jobs",
            supervisor,
        )
        time.sleep(0.5)
        supervisor.send_signal(signal.SIGTERM)
        out, _ = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, out
    workers = queue.list_workers(factory)
    assert len(workers) == 2 and {w.status for w in workers} == {"stopped"}
    jobs = queue.list_jobs(factory, study_id)
    assert [(j.state, j.attempts) for j in jobs] == [("queued", 0)] * 2  # given back, nothing spent
    _, trials = recorded_trials_per_cell(database_url, queue.get_study(factory, study_id).optuna_study_name)
    assert len(trials) == 2 and not [t for t in trials if t.state == TrialState.RUNNING]
    lines = supervisor_lines(out)
    assert any("forwarding SIGTERM to 2 workers" in line for line in lines)
    assert sum("exited 0" in line for line in lines) == 2 and not any("restart" in line for line in lines[2:])


def test_a_second_sigterm_is_forwarded_and_the_children_exit_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'hdetach.db'}"
    spec = {
        **TWO_CELLS,
        "name": "slow",
        "budget": {**TINY["budget"], "steps": 1_000_000, "eval_every": 500_000},
    }
    study_id = submit(url, spec)
    from studies.db.engine import make_engine, session_factory

    engine = make_engine(url)
    factory = session_factory(engine)
    supervisor = start_worker(url, "--device", "cpu,cpu", "--pack", "1", env=FAST)
    try:
        wait_for(
            lambda: queue.job_counts(factory, study_id).get("running", 0) == 2,
            90,
            "two running jobs",
            supervisor,
        )
        time.sleep(1.0)  # training, inside a 500,000-step evaluation interval
        supervisor.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGTERM)
        out, _ = supervisor.communicate(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
        engine.dispose()
    assert supervisor.returncode == 0, out  # stopped by the forwarded signals
    lines = supervisor_lines(out)
    assert any("stop signal 2: forwarding SIGTERM to 2 workers" in line for line in lines)
    assert sum(f"exited {128 + signal.SIGTERM}" in line for line in lines) == 2


def test_children_stop_gracefully_when_the_supervisor_is_killed(tmp_path):
    from studies.db.engine import make_engine, session_factory

    url = f"sqlite:///{tmp_path / 'hdetach.db'}"
    supervisor = start_worker(url, "--device", "cpu,cpu", env=FAST)
    engine = make_engine(url)
    factory = session_factory(engine)
    try:
        wait_for(lambda: len(list_workers_quietly(factory)) == 2, 90, "two workers", supervisor)
        supervisor.kill()  # SIGKILL: nothing forwarded; the children's parent-death signal stops them
        supervisor.communicate(timeout=30)
        wait_for(
            lambda: {w.status for w in queue.list_workers(factory)} == {"stopped"}, 60, "both stopped", None
        )
    finally:
        engine.dispose()


def test_device_all_without_a_visible_gpu_exits_3_with_one_line(tmp_path):
    database = tmp_path / "hdetach.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdetach",
            "worker",
            "--device",
            "all",
            "--database-url",
            f"sqlite:///{database}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "" and result.stderr.splitlines() == [
        "error: --device all: no CUDA device is visible (torch.cuda.device_count() is 0); no worker started"
    ]
    assert not database.exists()  # nothing was started


def test_a_child_whose_device_is_unusable_is_not_restarted(database_url, factory):
    study_id = submit(database_url, TINY)
    supervisor = start_worker(database_url, "--device", "cpu,cuda:99", "--pack", "4", "--exit-when-idle")
    out, _ = supervisor.communicate(timeout=240)
    assert supervisor.returncode == 3, out  # the last abnormal exit, never recovered
    lines = supervisor_lines(out)
    assert sum("on cuda:99" in line for line in lines) == 2  # started, then exited 3
    assert any("exited 3" in line and "device cuda:99 is unusable; not restarted" in line for line in lines)
    assert not any("restarting" in line or "restarted worker" in line for line in lines)
    assert {w.device for w in queue.list_workers(factory)} == {"cpu"}
    assert [(j.state, j.attempts) for j in queue.list_jobs(factory, study_id)] == [("done", 1)] * 12

    # every device unusable: 3
    supervisor = start_worker(database_url, "--device", "cuda:98,cuda:99", "--exit-when-idle")
    out, _ = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 3, out
    assert sum("not restarted" in line for line in supervisor_lines(out)) == 2


def test_per_device_2_runs_two_children_on_one_device(database_url, factory):
    supervisor = start_worker(database_url, "--device", "cpu", "--per-device", "2", "--exit-when-idle")
    out, _ = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 0, out
    workers = queue.list_workers(factory)
    assert len(workers) == 2 and len({w.pid for w in workers}) == 2
    assert {(w.device, w.status) for w in workers} == {("cpu", "stopped")}
    assert [line.split(" INFO ")[1].split(" (pid")[0] for line in supervisor_lines(out)[:2]] == [
        "started worker 1/2 on cpu",
        "started worker 2/2 on cpu",
    ]


# -- the rules ----------------------------------------------------------------------------------
def test_devices_expand_per_entry_and_per_device():
    assert expand_devices("cuda:0,cuda:2", 1) == ["cuda:0", "cuda:2"]
    assert expand_devices("cpu, cpu", 2) == ["cpu"] * 4
    assert expand_devices("all", 2, count_cuda=lambda: 2) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    with pytest.raises(NoDevicesError):
        expand_devices("all", 1, count_cuda=lambda: 0)
    for bad in ("cpu,", ",cpu", "all,cuda:0"):
        with pytest.raises(ValueError):
            expand_devices(bad, 1, count_cuda=lambda: 1)
    assert not needs_supervisor("cpu", 1) and not needs_supervisor("cuda:1", 1)
    assert needs_supervisor("cpu", 2) and needs_supervisor("cpu,cpu", 1) and needs_supervisor("all", 1)


def test_children_get_the_other_options():
    command = child_command(
        "cuda:1",
        database_url="postgresql://db/x",
        pack=16,
        threads=2,
        exit_when_idle=True,
        max_packs=3,
        max_infra_failures=7,
        wait_for_database=30,
    )
    assert command[:4] == [sys.executable, "-m", "hdetach", "worker"]
    assert " ".join(command[4:]) == (
        "--device cuda:1 --pack 16 --max-infra-failures 7 --wait-for-database 30 "
        "--database-url postgresql://db/x --threads 2 --max-packs 3 --exit-when-idle"
    )
    bare = child_command(
        "cpu",
        database_url=None,
        pack=8,
        threads=None,
        exit_when_idle=False,
        max_packs=None,
        max_infra_failures=5,
    )
    assert " ".join(bare[4:]) == "--device cpu --pack 8 --max-infra-failures 5 --wait-for-database 120"


def test_the_exit_code_rule():
    assert combined_exit_code([(0, False), (0, True), (-signal.SIGTERM, True), (143, True)]) == 0
    assert combined_exit_code([(3, False), (3, False)]) == 3
    assert combined_exit_code([(0, False), (3, False)]) == 3
    assert combined_exit_code([(4, False), (0, True), (5, False)]) == 5  # the last abnormal one
    assert combined_exit_code([(-9, False), (0, False)]) == 137


def counting_child(counter: Path, fails: int, code: int) -> list[str]:
    """A child that exits `code` its first `fails` times, then 0."""
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
        f"p.write_text(str(n + 1)); sys.exit({code} if n < {fails} else 0)"
    )
    return [sys.executable, "-c", script, str(counter)]


def restart_delays(records, device: str) -> list[str]:
    return [
        r.getMessage().rsplit("restarting in ", 1)[1]
        for r in records
        if f"on {device} " in r.getMessage() and "restarting in" in r.getMessage()
    ]


def test_dying_children_are_restarted_with_a_doubling_backoff(tmp_path, caplog):
    caplog.set_level("INFO", logger="hdetach.supervisor")
    supervisor = Supervisor(
        [
            ("cuda:0", counting_child(tmp_path / "a", 4, 5)),  # EXIT_DEVICE_LOST x4, then done
            ("cuda:1", counting_child(tmp_path / "b", 1, 4)),  # EXIT_HALTED once, then done
        ],
        first_backoff=0.1,
        max_backoff=0.4,
        poll_seconds=0.01,
    )
    before = signal.getsignal(signal.SIGTERM)
    assert supervisor.run() == 0  # each slot recovered
    assert signal.getsignal(signal.SIGTERM) is before  # handlers given back
    assert (tmp_path / "a").read_text() == "5" and (tmp_path / "b").read_text() == "2"
    assert restart_delays(caplog.records, "cuda:0") == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"]
    assert restart_delays(caplog.records, "cuda:1") == ["0.1 s"]

    caplog.clear()  # a child that had run `stable_seconds` starts the back-off afresh
    supervisor = Supervisor(
        [("cuda:2", counting_child(tmp_path / "c", 3, 5))],
        first_backoff=0.1,
        stable_seconds=0,
        poll_seconds=0.01,
    )
    assert supervisor.run() == 0
    assert restart_delays(caplog.records, "cuda:2") == ["0.1 s"] * 3


def test_a_stop_while_a_restart_is_pending_cancels_it_and_keeps_the_exit_code(tmp_path, caplog):
    caplog.set_level("INFO", logger="hdetach.supervisor")
    supervisor = Supervisor(
        [
            ("cpu", counting_child(tmp_path / "a", 100, 4)),
            ("cpu", [sys.executable, "-c", "import time; time.sleep(60)"]),
        ],
        first_backoff=30,
        poll_seconds=0.01,
    )
    threading.Timer(2.0, supervisor.request_stop).start()
    started = time.monotonic()
    assert supervisor.run() == 4  # the halted slot never recovered
    assert time.monotonic() - started < 20
    assert (tmp_path / "a").read_text() == "1"
    messages = [r.getMessage() for r in caplog.records]
    assert any("restart cancelled" in m for m in messages)
    assert any("was killed by signal 15" in m for m in messages)  # the sleeper, stopped by the forward

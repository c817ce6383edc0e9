"""Faults a worker meets, with real worker processes on SQLite and PostgreSQL: shared pack keys,
infrastructure errors, unusable devices, out-of-memory packs, and deaths inside the Optuna
bookkeeping. Each ends with every cell recorded exactly once, in our tables and in its own
Optuna study, and no attempt spent on anything that was not the trial's fault."""

from __future__ import annotations

import sqlite3
from collections import Counter

import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from deployment.backend import Backend
from deployment.settings import Settings
from studies import queue
from studies.lstm import KernelBuildError
from tests.workers.test_worker_processes import TINY, factory, recorded_trials_per_cell, start_worker
from workers.failures import FailureKind, InfrastructureError, classify, touches_the_device
from workers.worker import check_device

__all__ = ["factory"]  # the fixture, shared with test_worker_processes

FAST = {"HDETACH_LEASE_SECONDS": "2", "HDETACH_HEARTBEAT_SECONDS": "0.5", "HDETACH_POLL_SECONDS": "0.1"}


def submit(url: str, **changes) -> int:
    with Backend(Settings(database_url=url)) as backend:
        return backend.submit({**TINY, **changes})


def run_worker(url: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    worker = start_worker(url, "--exit-when-idle", *extra, env={**FAST, **(env or {})})
    out, _ = worker.communicate(timeout=300)
    return worker.returncode, out


def assert_each_cell_recorded_once(url: str, factory, study_id: int, attempts: int = 1) -> list:
    """Every job done after `attempts` attempts; one recorded Optuna trial per cell; none RUNNING."""
    jobs = queue.list_jobs(factory, study_id)
    assert [(j.state, j.attempts) for j in jobs] == [("done", attempts)] * len(jobs)
    recorded, trials = recorded_trials_per_cell(url, queue.get_study(factory, study_id).optuna_study_name)
    assert recorded == Counter(range(len(jobs)))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    by_cell = {t.user_attrs["cell"]: t for t in trials if t.user_attrs.get("recorded")}
    for job in jobs:  # the recorded trial is the one the job points at, with the job's own params
        trial = by_cell[job.cell_index]
        assert (trial.params["lr"], trial.user_attrs["seed"], trial.user_attrs["job_id"]) == (
            job.lr,
            job.seed,
            job.id,
        )
    return trials


def test_studies_with_equal_shapes_never_share_a_pack(database_url, factory):
    first = submit(database_url, seeds=[1, 2])
    second = submit(database_url, seeds=[1, 2, 3])
    code, out = run_worker(database_url, "--pack", "16")
    assert code == 0, out
    for study_id in (first, second):
        trials = assert_each_cell_recorded_once(database_url, factory, study_id)
        assert len(trials) == len(queue.list_jobs(factory, study_id))  # nothing of the other study


def test_infrastructure_errors_spend_no_attempt_and_a_failing_worker_halts(database_url, factory):
    study_id = submit(database_url)
    code, out = run_worker(
        database_url,
        "--pack",
        "4",
        "--max-infra-failures",
        "3",
        env={"HDETACH_TEST_FAULT": "curve-write:db-error"},
    )
    assert code == 4, out
    assert "halting: 3 infrastructure failures in a row" in out
    (worker,) = queue.list_workers(factory)
    assert worker.status == "halted" and "OperationalError" in (worker.reason or "")
    jobs = queue.list_jobs(factory, study_id)
    assert {(j.state, j.attempts) for j in jobs} == {("queued", 0)}  # given back, nothing spent
    _, trials = recorded_trials_per_cell(database_url, queue.get_study(factory, study_id).optuna_study_name)
    assert len(trials) == 12 and {t.state for t in trials} == {TrialState.FAIL}

    code, out = run_worker(database_url, "--pack", "4")
    assert code == 0, out
    assert_each_cell_recorded_once(database_url, factory, study_id)


def test_a_worker_on_a_device_it_cannot_use_exits_without_claiming(database_url, factory):
    study_id = submit(database_url)
    code, out = run_worker(database_url, "--device", "cuda:0")
    assert code == 3, out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "device cuda:0 is not usable" in errors[0] and "not claiming" in errors[0]
    assert {(j.state, j.attempts) for j in queue.list_jobs(factory, study_id)} == {("queued", 0)}
    assert queue.list_workers(factory) == []


@pytest.mark.parametrize("variable", ["HDETACH_CUDA_GRAPHS", "HDETACH_TRITON"])
def test_the_device_check_refuses_an_unknown_accelerator_setting_in_one_line(monkeypatch, variable):
    monkeypatch.setenv(variable, "sometimes")
    with pytest.raises(InfrastructureError) as error:
        check_device("cpu")
    assert str(error.value) == f"{variable}='sometimes': expected one of auto, on, off"


def test_a_worker_whose_database_stays_unreachable_exits_6_with_one_line():
    worker = start_worker(
        "postgresql://postgres:secret@127.0.0.1:1/nowhere", "--wait-for-database", "2", env=FAST
    )
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 6, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("error: database postgresql://postgres:***@127.0.0.1:1/nowhere unreachable")
    assert "Traceback" not in out and "secret" not in out


def test_out_of_memory_halves_the_pack_down_to_one_trial_without_spending_attempts(database_url, factory):
    study_id = submit(database_url, learning_rates=[0.001, 0.01], seeds=[1])  # 4 cells
    code, out = run_worker(database_url, "--pack", "4", env={"HDETACH_TEST_FAULT": "training:oom"})
    assert code == 0, out
    assert out.count("halving the pack") == 3  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    trials = assert_each_cell_recorded_once(database_url, factory, study_id)
    halved = [t for t in trials if not t.user_attrs.get("recorded")]
    assert len(halved) == 4 + 4 and all(
        "out of memory, pack halved" in t.user_attrs["outcome"] for t in halved
    )


@pytest.mark.parametrize("point", ["trials-started", "results-recorded"])
def test_a_worker_killed_inside_the_optuna_bookkeeping_leaves_nothing_behind(database_url, factory, point):
    """Killed after opening its Optuna trials but before the jobs point at them, or after recording
    results but before closing its trials: the next worker's sweep finishes what it left."""
    study_id = submit(database_url)
    victim = start_worker(database_url, "--pack", "4", env={**FAST, "HDETACH_TEST_FAULT": point})
    victim.communicate(timeout=120)
    assert victim.returncode == -9
    left = Counter(j.state for j in queue.list_jobs(factory, study_id))
    assert left == ({"running": 4, "queued": 8} if point == "trials-started" else {"done": 4, "queued": 8})
    _, trials = recorded_trials_per_cell(database_url, queue.get_study(factory, study_id).optuna_study_name)
    assert [t.state for t in trials] == [TrialState.RUNNING] * 4  # what the dead worker left

    code, out = run_worker(database_url, "--pack", "4")
    assert code == 0, out
    trials = assert_each_cell_recorded_once(database_url, factory, study_id)
    first_four = sorted(trials, key=lambda t: t.number)[:4]
    if point == "results-recorded":  # the results were written to Optuna as the worker would have
        assert all(t.state == TrialState.COMPLETE and t.user_attrs["recorded"] for t in first_four)
    else:
        assert all(
            t.state == TrialState.FAIL and "worker died" in t.user_attrs["outcome"] for t in first_four
        )
    assert {j.lost_leases for j in queue.list_jobs(factory, study_id)} <= {0, 1}


def test_after_a_cuda_error_the_worker_spends_that_packs_attempt_and_exits_for_a_fresh_process(
    database_url, factory
):
    """CUDA errors are sticky: a device-side assert is the trial's fault, but every later pack in
    this process would fail the same way, spending attempts across the whole queue."""
    study_id = submit(database_url)
    code, out = run_worker(database_url, "--pack", "4", env={"HDETACH_TEST_FAULT": "training:device-assert"})
    assert code == 5, out
    assert "device is unusable after RuntimeError: CUDA error: device-side assert" in out
    attempts = Counter((j.state, j.attempts) for j in queue.list_jobs(factory, study_id))
    assert attempts == {("queued", 1): 4, ("queued", 0): 8}  # only the pack that met it spent one


def test_a_settle_whose_commit_went_through_unacknowledged_still_records_its_trials(database_url, factory):
    from studies.tracking import open_storage
    from workers import attempts as attempts_module
    from workers.attempts import PackAttempt

    study_id = submit(database_url, learning_rates=[0.001], seeds=[1])  # 2 cells
    jobs = queue.claim(factory, "w", 2, 60)
    storage = open_storage(database_url)
    try:
        attempt = PackAttempt(factory, storage, jobs, "w", "cpu")
        attempt.open()
        real = queue.complete_many
        calls = []

        def commits_then_drops(*args, **kwargs):  # the commit lands, its acknowledgement does not
            calls.append(real(*args, **kwargs))
            if len(calls) == 1:
                raise OperationalError("COMMIT", {}, sqlite3.OperationalError("connection dropped"))
            return calls[-1]

        attempts_module.queue.complete_many = commits_then_drops  # type: ignore[attr-defined]
        records = [{"status": "completed", "final": {"accuracy": 0.5 + k / 10}} for k in range(2)]
        try:
            with pytest.raises(OperationalError):
                attempt.settle(records)
            attempt.settle(records)  # what the worker does next
        finally:
            attempts_module.queue.complete_many = real  # type: ignore[attr-defined]
    finally:
        storage.engine.dispose()
    assert [len(c) for c in calls] == [2, 0]  # recorded once, by the first call
    assert_each_cell_recorded_once(database_url, factory, study_id)


def test_failures_are_told_apart():
    dropped = OperationalError("SELECT 1", {}, sqlite3.OperationalError("server closed the connection"))
    assert classify(dropped) is FailureKind.INFRASTRUCTURE
    assert classify(KernelBuildError("no compiler")) is FailureKind.INFRASTRUCTURE
    assert classify(InfrastructureError("device lost")) is FailureKind.INFRASTRUCTURE
    assert classify(RuntimeError("CUDA error: an illegal memory access was encountered")) is (
        FailureKind.INFRASTRUCTURE
    )
    assert classify(RuntimeError("CUDA error: device-side assert triggered")) is FailureKind.TRIAL
    assert classify(torch.OutOfMemoryError("CUDA out of memory")) is FailureKind.OUT_OF_MEMORY
    assert classify(ValueError("a bad value")) is FailureKind.TRIAL
    assert touches_the_device(RuntimeError("CUDA error: device-side assert triggered"))
    assert touches_the_device(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not touches_the_device(torch.OutOfMemoryError("CUDA out of memory"))
    assert not touches_the_device(dropped)
    try:  # the cause counts: a callback's database error re-raised by the trainer
        try:
            raise dropped
        except OperationalError as error:
            raise RuntimeError("evaluation callback failed") from error
    except RuntimeError as wrapped:
        assert classify(wrapped) is FailureKind.INFRASTRUCTURE


def test_the_fault_hook_is_inert_unless_asked(monkeypatch):
    from workers import faults

    faults._planned.cache_clear()
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    faults.hit("trials-started")  # nothing happens
    monkeypatch.setenv(faults.FAULT_ENV, "nowhere")
    faults._planned.cache_clear()
    with pytest.raises(ValueError, match="unknown point"):
        faults.hit("trials-started")
    faults._planned.cache_clear()

"""The Ray Tune engine, end to end on a local Ray (CPU), on SQLite and PostgreSQL.

`hdetach ray-run` runs as a real process with its own local Ray. One drain runs two Ray studies in
one Tune experiment: one that trains, and one whose data is missing on the Ray workers, so every
pack fails and Tune's retries are visible as failed attempts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

from deployment.backend import Backend
from deployment.settings import Settings
from studies import queue
from studies.db.engine import make_engine, session_factory
from studies.results import study_summary, trial_row
from studies.spec import StudySpec
from studies.tracking import open_storage
from tests.studies.test_tasks import write_idx
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny-ray",
    "task": {"name": "copying", "T": 3, "n_val": 16, "n_test": 16},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.001, 0.01],
    "seeds": [1, 2],
    "budget": {"steps": 6, "eval_every": 3, "batch_size": 4, "eval_batch_size": 16},
    "engine": "ray",
}
NO_DATA = {
    **TINY,
    "name": "no-data",
    # the deployment's MNIST directory (a small set: allowed as a subset), removed once submitted
    "task": {"name": "pixel_mnist", "allow_subset": True},
    "learning_rates": [0.001],
    "seeds": [1],
}


def ray_run(url: str, tmp_path: Any, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "hdetach", "ray-run", "--database-url", url, "--num-cpus", "2", *args]
    env = {
        **os.environ,
        "HDETACH_RAY_STORAGE_PATH": str(tmp_path / "tune"),
        "HDETACH_MAX_ATTEMPTS": "2",
        "RAY_ADDRESS": "",
        **(env or {}),
    }
    with open(tmp_path / "ray-run.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen[str], tmp_path: Any, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    output = (tmp_path / "ray-run.log").read_text()
    assert process.returncode == 0, output
    return output


def trials_by_cell(url: str, optuna_name: str) -> dict[int, list]:
    storage = open_storage(url)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(optuna_name))
    finally:
        storage.engine.dispose()
    cells: dict[int, list] = {}
    for trial in trials:
        cells.setdefault(trial.user_attrs["cell"], []).append(trial)
    return cells


def summary_shape(value: Any) -> Any:
    """The keys of a nested JSON value, with the values dropped."""
    if isinstance(value, dict):
        return {key: summary_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [summary_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else "null"


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def test_ray_engine_records_results_like_the_queue(database_url, factory, tmp_path):
    mnist_dir = tmp_path / "mnist"
    write_idx(mnist_dir)
    with Backend(Settings(database_url=database_url, max_attempts=2, mnist_dir=str(mnist_dir))) as backend:
        trained = backend.submit(TINY)
        broken = backend.submit(NO_DATA)
        shutil.rmtree(mnist_dir)  # the data is gone by the time a worker reads it: a trial error
        # the same grid for the queue engine, to compare with
        on_queue = backend.submit({**TINY, "name": "tiny-queue", "engine": "queue"})

    # queue workers leave the Ray studies alone
    Worker(WorkerOptions(database_url=database_url, pack=4, threads=1, exit_when_idle=True)).run()
    assert queue.get_study(factory, on_queue).status == "done"
    assert queue.job_counts(factory, trained)["queued"] == 8

    output = finish(ray_run(database_url, tmp_path, "--pack", "4"), tmp_path)
    assert "ran 10 cells in 3 packs on Ray" in output

    # the study that trained: every cell done once, by the Ray driver, with a curve in Optuna
    study = queue.get_study(factory, trained)
    jobs = queue.list_jobs(factory, trained)
    assert study.status == "done"
    assert [(j.state, j.attempts) for j in jobs] == [("done", 1)] * 8
    assert {j.worker_id for j in jobs} == {next(iter({j.worker_id for j in jobs}))}
    assert jobs[0].worker_id.startswith("ray-")
    assert {json.loads(j.result_json)["device"] for j in jobs} == {"ray/cpu"}
    cells = trials_by_cell(database_url, study.optuna_study_name)
    assert sorted(cells) == list(range(8))
    for trials in cells.values():
        (trial,) = trials
        assert trial.state.name == "COMPLETE" and trial.user_attrs["recorded"]
        assert sorted(trial.intermediate_values) == [3, 6]

    # same seeds, same training: the engines agree on the numbers, and the summaries on their shape
    spec = StudySpec.model_validate(TINY)
    ray_rows = [trial_row(j, spec.success.metric) for j in jobs]
    queue_rows = [trial_row(j, spec.success.metric) for j in queue.list_jobs(factory, on_queue)]
    for ray_row, queue_row in zip(ray_rows, queue_rows, strict=True):
        assert (ray_row.variant, ray_row.lr, ray_row.seed) == (
            queue_row.variant,
            queue_row.lr,
            queue_row.seed,
        )
        assert ray_row.metric == pytest.approx(queue_row.metric, abs=1e-4)
    ray_summary = study_summary(spec, ray_rows).model_dump(mode="json")
    queue_summary = study_summary(spec, queue_rows).model_dump(mode="json")
    assert summary_shape(ray_summary) == summary_shape(queue_summary)

    # the study whose data is missing: Tune retried once (max_attempts 2), then its jobs failed
    jobs = queue.list_jobs(factory, broken)
    assert [(j.state, j.attempts) for j in jobs] == [("failed", 2)] * 2
    assert all("MNIST" in (j.last_error or "") for j in jobs)
    assert queue.get_study(factory, broken).status == "failed"
    for attempts in trials_by_cell(database_url, queue.get_study(factory, broken).optuna_study_name).values():
        assert [t.user_attrs["attempt"] for t in attempts] == [1, 2]
        assert all(t.state.name == "FAIL" and t.user_attrs["outcome"].startswith("error") for t in attempts)

    # the driver registered itself and signed off
    (driver,) = [w for w in queue.list_workers(factory) if w.id.startswith("ray-")]
    assert (driver.device, driver.status) == ("ray:local", "stopped")


def wait_for(condition: Any, process: subprocess.Popen[str], tmp_path: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        log = (tmp_path / "ray-run.log").read_text()
        assert time.monotonic() < deadline and process.poll() is None, log
        time.sleep(0.5)


def test_watching_driver_picks_up_studies_stops_cancelled_packs_and_sigterm(tmp_path):
    """What the compose ray-head runs: `hdetach ray-run --watch`, stopped by SIGTERM."""
    url = f"sqlite:///{tmp_path / 'cancel.db'}"
    long = {**TINY, "name": "long", "budget": {"steps": 5000, "eval_every": 5, "batch_size": 4}}
    env = {"HDETACH_HEARTBEAT_SECONDS": "0.5", "HDETACH_POLL_SECONDS": "0.5"}
    with Backend(Settings(database_url=url)) as backend:
        process = ray_run(url, tmp_path, "--watch", "--pack", "4", env=env)
        wait_for(
            lambda: any(w.status == "running" for w in queue.list_workers(backend.factory)), process, tmp_path
        )
        study_id = backend.submit(long)  # submitted while the driver watches
        optuna_name = queue.get_study(backend.factory, study_id).optuna_study_name

        def curves_started() -> bool:
            return any(t.intermediate_values for ts in trials_by_cell_or_empty(url, optuna_name) for t in ts)

        wait_for(curves_started, process, tmp_path)
        queue.cancel_study(backend.factory, study_id)
        wait_for(lambda: queue.get_study(backend.factory, study_id).status == "cancelled", process, tmp_path)
        process.send_signal(signal.SIGTERM)
        finish(process, tmp_path, timeout=120)
        jobs = queue.list_jobs(backend.factory, study_id)
        (driver,) = queue.list_workers(backend.factory)
    assert Counter(j.state for j in jobs) == Counter({"cancelled": 8})
    outcomes = {t.user_attrs.get("outcome") for ts in trials_by_cell(url, optuna_name).values() for t in ts}
    assert outcomes == {"cancelled"}
    assert driver.status == "stopped"


def trials_by_cell_or_empty(url: str, optuna_name: str) -> list[list]:
    try:
        return list(trials_by_cell(url, optuna_name).values())
    except KeyError:  # the driver has not created the Optuna study yet
        return []


TUNE_STRINGS = {"trial_id", "date", "hostname", "node_ip", "checkpoint_dir_name"}  # Tune adds these
COUNTS = ("step", "n_running", "n_diverged", "resumed_from_step")


def tune_results(tmp_path: Any, trial_name: str) -> list[dict[str, Any]]:
    """What Tune logged for one trial (its result.json, a JSON object per report)."""
    (path,) = (tmp_path / "tune").glob(f"*/{trial_name}/result.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_killed_pack_resumes_from_its_checkpoint_and_ends_as_if_uninterrupted(tmp_path):
    """The Ray worker training the pack is killed right after its first evaluation and checkpoint
    reached Tune; Tune restarts it, and it resumes from that checkpoint (step 3), not from step 0.
    Also what a Tune user sees: short trial names, numeric metrics, the dashboard line, progress."""
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    grid = {**TINY, "name": "resume", "learning_rates": [0.01], "seeds": [1]}
    with Backend(Settings(database_url=url)) as backend:
        on_ray = backend.submit(grid)
        on_queue = backend.submit({**grid, "name": "resume-queue", "engine": "queue"})
    Worker(WorkerOptions(database_url=url, pack=4, threads=1, exit_when_idle=True)).run()
    output = finish(
        ray_run(url, tmp_path, "--pack", "4", env={"HDETACH_TEST_FAULT": "ray-evaluated"}), tmp_path
    )
    assert "Ray dashboard: " in output
    assert "pack s1-pack0 failed on Ray (The actor is dead" in output and "retrying from step 3" in output
    assert ": 0/2 cells done, 0 failed; step 0/6" in output  # progress: a line as the drain starts
    assert ": 2/2 cells done, 0 failed; step 6/6 summed over packs, ETA 0:00:00" in output

    # Tune's view: the trial is s<study>-pack<k>, killed after step 3, resumed there (not at 0)
    rows = tune_results(tmp_path, f"s{on_ray}-pack0")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(3, 0), (6, 3), (6, 3)]
    labels = ("vanilla_lr0.01_s1", "h-detach_lr0.01_s1")
    assert {k for k in rows[0] if "/" in k} == {
        f"{label}/{name}" for label in labels for name in ("train_loss", "val_loss", "val_accuracy")
    }
    assert {k for k in rows[-1] if "/" in k} == {
        f"{label}/test_{name}" for label in labels for name in ("loss", "accuracy")
    }
    for row in rows:  # every value we report is a number; the strings are Tune's own
        assert {k for k, v in row.items() if isinstance(v, str)} <= TUNE_STRINGS
        assert all(type(v) in (int, float) for k, v in row.items() if "/" in k or k in COUNTS)

    # our tables: each cell recorded once, by its second attempt, as the uninterrupted queue run
    engine = make_engine(url)
    factory = session_factory(engine)
    jobs = queue.list_jobs(factory, on_ray)
    assert [(j.state, j.attempts) for j in jobs] == [("done", 2)] * 2
    for ray_job, queue_job in zip(jobs, queue.list_jobs(factory, on_queue), strict=True):
        ray_result, queue_result = json.loads(ray_job.result_json), json.loads(queue_job.result_json)
        assert ray_result["steps_run"] == queue_result["steps_run"] == 6
        for key in ("final", "best_val"):  # exact resume: equal to 1e-12 (bit-equal here)
            assert ray_result[key] == pytest.approx(queue_result[key], rel=1e-12)
        for ray_point, queue_point in zip(ray_result["curve"], queue_result["curve"], strict=True):
            assert ray_point == pytest.approx(queue_point, rel=1e-12)
    # Optuna: the killed attempt FAIL, the second COMPLETE with the whole curve (step 3 carried over)
    for attempts in trials_by_cell(url, queue.get_study(factory, on_ray).optuna_study_name).values():
        assert [(t.user_attrs["attempt"], t.state.name) for t in attempts] == [(1, "FAIL"), (2, "COMPLETE")]
        assert sorted(attempts[0].intermediate_values) == [3]
        assert sorted(attempts[1].intermediate_values) == [3, 6]
        assert attempts[1].intermediate_values[3] == attempts[0].intermediate_values[3]
    engine.dispose()

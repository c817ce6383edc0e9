"""`hdetach studies list|show|watch|cancel|delete`, `status`, `requeue`, `summary`, `export` and
`--version`, each run through the installed entry point (`.venv/bin/hdetach`) as a real process, on
a study trained by a real worker."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version

import httpx
import pytest

from studies import queue
from tests.hdetach.conftest import HDETACH, TINY, WIDE, hdetach, one_line_error, submit
from tests.service.conftest import free_port, start, stop, wait_http


@pytest.fixture(scope="module")
def api(trained: tuple[str, int]) -> Iterator[httpx.Client]:
    """The REST service (`hdetach serve`) on the same database: what the CLI's output must equal."""
    port = free_port()
    server = start([HDETACH, "serve", "--port", str(port)], {"HDETACH_DATABASE_URL": trained[0]})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        stop(server)


def test_version_is_the_installed_distributions():
    result = hdetach("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hdetach-studies {version('hdetach-studies')}"


def test_list_show_and_status_describe_the_study_as_the_api_does(trained, api):
    url, study_id = trained
    listed = json.loads(hdetach("studies", "list", "--json", url=url).stdout)
    rest = api.get(f"/studies/{study_id}").json()
    (info,) = [s for s in listed if s["id"] == study_id]
    assert {k: rest[k] for k in info} == info  # the fields shown are the REST service's
    assert info["status"] == "done" and info["jobs"]["done"] == 4
    shown = hdetach("studies", "show", str(study_id), url=url)
    assert shown.returncode == 0
    expected = [f"study {study_id} (tiny-copy): done, 4/4 cells finished", "  done 4"]
    assert shown.stdout.splitlines() == expected
    assert hdetach("status", str(study_id), url=url).stdout == shown.stdout  # the alias
    table = hdetach("studies", "list", url=url, env=WIDE)
    (row,) = [line for line in table.stdout.splitlines() if "tiny-copy" in line]
    assert [cell.strip() for cell in row.split("│")[1:7]] == [
        str(study_id),
        "tiny-copy",
        "done",
        "4/4",
        "0",
        "0",
    ]


def test_summary_json_is_the_rest_summary_and_the_text_is_the_demos(trained, api):
    url, study_id = trained
    as_json = hdetach("summary", str(study_id), "--json", url=url)
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.strip() == api.get(f"/studies/{study_id}/summary").text
    text = hdetach("summary", str(study_id), url=url, env=WIDE)
    assert "robustness summary: test accuracy (success: >= 0.5)" in text.stdout
    assert "  vanilla: lr 0.01: " in text.stdout and "paired comparison, h-detach vs vanilla" in text.stdout
    one_line_error(hdetach("summary", str(study_id), "--robust-level", "0", url=url), 2, "--robust-level")


def test_export_csv_is_the_rest_download_and_json_and_parquet_hold_the_same_rows(trained, api, tmp_path):
    url, study_id = trained
    command = [HDETACH, "export", str(study_id), "--format", "csv", "--database-url", url]
    exported = subprocess.run(command, capture_output=True, timeout=180)  # bytes: CRLF line ends kept
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == api.get(f"/studies/{study_id}/trials.csv").content
    rows = list(csv.DictReader(io.StringIO(exported.stdout.decode())))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"done"} and rows[0]["final_accuracy"]
    out = tmp_path / "rows.json"
    assert hdetach("export", str(study_id), "-f", "json", "-o", str(out), url=url).returncode == 0
    records = json.loads(out.read_text())
    assert [r["cell"] for r in records] == [0, 1, 2, 3]
    assert [str(r["final_accuracy"]) for r in records] == [r["final_accuracy"] for r in rows]
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    assert hdetach("export", str(study_id), "-f", "parquet", "-o", str(parquet), url=url).returncode == 0
    assert pq.read_table(parquet).to_pylist() == records


def test_export_parquet_without_pyarrow_is_one_line(trained, tmp_path):
    url, study_id = trained
    fake = tmp_path / "shadow" / "pyarrow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('pyarrow is hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}:{os.environ.get('PYTHONPATH', '')}"}
    target = str(tmp_path / "x.parquet")
    result = hdetach("export", str(study_id), "-f", "parquet", "-o", target, url=url, env=env)
    one_line_error(result, 2, "needs pyarrow")
    assert not (tmp_path / "x.parquet").exists()


def _fail_for_good(factory, study_id: int, cells: int) -> None:
    """Fail `cells` of the study's cells on every attempt (3, HDETACH_MAX_ATTEMPTS' default)."""
    for _ in range(3):
        jobs = queue.claim(factory, "test", cells, 60, engine=None, study_id=study_id)
        for job in jobs:
            assert queue.fail(factory, job.job_id, job.lease_token, "boom")


def test_requeue_failed_queues_failed_cells_again_and_refuses_cancelled_studies(trained, factory, tmp_path):
    url, _ = trained
    study_id = submit(url, {**TINY, "name": "to-requeue", "seeds": [1]}, tmp_path)
    _fail_for_good(factory, study_id, 2)
    assert queue.get_study(factory, study_id).status == "failed"
    one_line_error(hdetach("requeue", str(study_id), url=url), 2, "give --failed")
    result = hdetach("requeue", str(study_id), "--failed", url=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"study {study_id}: 2 failed cells queued again; study running"
    assert hdetach("status", str(study_id), url=url).stdout.splitlines() == [
        f"study {study_id} (to-requeue): running, 0/2 cells finished",
        "  queued 2",
    ]
    (job, _) = queue.claim(factory, "test", 2, 60, engine=None, study_id=study_id)
    assert job.attempt == 4  # a new attempt, after the three that failed
    again = hdetach("requeue", str(study_id), "--failed", url=url)
    assert again.stdout.strip() == f"study {study_id}: no failed cells; nothing queued (study running)"
    cancelled = hdetach("studies", "cancel", str(study_id), url=url)
    assert cancelled.returncode == 0 and "(cancel requested)" in cancelled.stdout
    one_line_error(hdetach("requeue", str(study_id), "--failed", url=url), 1, "is cancelled")
    one_line_error(hdetach("requeue", "999", "--failed", url=url), 1, "no study with id 999")


def test_cancel_then_delete(trained, tmp_path):
    url, _ = trained
    study_id = submit(url, {**TINY, "name": "to-delete"}, tmp_path)
    cancelled = hdetach("studies", "cancel", str(study_id), url=url)
    assert cancelled.stdout.splitlines() == [
        f"study {study_id} (to-delete): cancelled, 4/4 cells finished",
        "  cancelled 4",
    ]
    one_line_error(hdetach("studies", "delete", str(study_id), url=url), 2, "needs --yes")
    deleted = hdetach("studies", "delete", str(study_id), "--yes", url=url)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted study {study_id} (to-delete)"
    one_line_error(hdetach("studies", "show", str(study_id), url=url), 1, f"no study with id {study_id}")


def _start_watch(url: str, study_id: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [HDETACH, "studies", "watch", str(study_id), "--interval", "0.2", "--database-url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert "watching study" in proc.stderr.readline()  # it is in its loop now
    return proc


def test_watch_follows_a_study_until_it_finishes(trained, factory, tmp_path):
    url, _ = trained
    study_id = submit(url, {**TINY, "name": "to-watch"}, tmp_path)
    proc = _start_watch(url, study_id)
    try:
        for job in queue.claim(factory, "test", 4, 60, engine=None, study_id=study_id):
            time.sleep(0.3)
            result = {"final": {"accuracy": 0.9, "loss": 0.1}, "status": "completed"}
            assert queue.complete_many(factory, [(job.job_id, job.lease_token, result)])
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"study {study_id} (to-watch): done, 4/4 cells finished" in out
    assert "robustness summary: test accuracy" in out and "  h-detach: lr 0.01: 2/2" in out


def test_watch_stops_cleanly_on_ctrl_c_and_the_study_goes_on(trained, tmp_path):
    url, _ = trained
    study_id = submit(url, {**TINY, "name": "to-interrupt"}, tmp_path)
    proc = _start_watch(url, study_id)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == f"stopped watching study {study_id}; it goes on"
    assert "queued 4" in hdetach("status", str(study_id), url=url).stdout

"""optuna-dashboard reads what the API and the workers wrote; schemathesis finds no 5xx in the API."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from studies import queue
from studies.db.engine import make_engine, normalise_url, session_factory
from tests.service.conftest import TOKEN, free_port, run_worker, start, stop, wait_http
from tests.service.test_studies_api import SPEC


def test_optuna_dashboard_lists_the_study_its_trials_params_and_curves(server):
    study = server.client().post("/studies", json=SPEC).json()
    run_worker(server.database_url)
    port = free_port()
    dashboard = start(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            normalise_url(server.database_url),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/api/meta")
        studies = httpx.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
        match = [s for s in studies if s["study_name"] == study["optuna_study_name"]]
        assert len(match) == 1
        detail = httpx.get(f"{base}/api/studies/{match[0]['study_id']}", timeout=30).json()
        trials = detail["trials"]
        assert len(trials) == 8 and {t["state"] for t in trials} == {"Complete"}
        params = {p["name"]: p for p in trials[0]["params"]}
        assert params.keys() == {"variant", "p_detach", "lr"}  # the seed is a user attr
        assert params["lr"]["distribution"]["log"] is True
        attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
        assert {"seed", "pack_size", "wall_time_s"} <= attrs.keys() and "final" not in attrs
        assert [v["step"] for v in trials[0]["intermediate_values"]] == [3, 6, 9]
        assert detail["objective_names"] == [f"test_{SPEC['success']['metric']}"]
    finally:
        stop(dashboard)


def populate(url: str, database_url: str) -> None:
    """Studies in every finished state (done by a real worker, cancelled, failed after every attempt)
    and one still queued: the reads then meet real results, errors and empty ones."""
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    with api:
        api.post("/studies", json={**SPEC, "name": "done"}).raise_for_status()
        run_worker(database_url)
        cancelled = api.post("/studies", json={**SPEC, "name": "cancelled"}).json()["id"]
        api.post(f"/studies/{cancelled}/cancel").raise_for_status()
        api.post("/studies", json={**SPEC, "name": "failed"}).raise_for_status()
        engine = make_engine(database_url)
        factory = session_factory(engine)
        while jobs := queue.claim(factory, "fuzz-worker", 8, lease_seconds=60):
            for job in jobs:
                queue.fail(factory, job.job_id, job.lease_token, "boom\x01 <b>not html</b>")
        engine.dispose()
        api.post("/studies", json={**SPEC, "name": "queued"}).raise_for_status()
        states = {s["name"]: s["status"] for s in api.get("/studies").json()["items"]}
    assert states == {"done": "done", "cancelled": "cancelled", "failed": "failed", "queued": "queued"}


SERVER_ERRORS = ("ST101", "ST102")  # schemathesis's codes for a 5xx


@pytest.mark.parametrize("populated", [False, True], ids=["fresh", "populated"])
def test_schemathesis_with_every_check_finds_no_server_error(database_url, populated, tmp_path):
    # small limits keep generated studies small, so the run stays bounded in time
    port = free_port()
    env = {"HDETACH_API_TOKENS": TOKEN, "HDETACH_DATABASE_URL": database_url, "HDETACH_MAX_GRID_SIZE": "16"}
    server = start([sys.executable, "-m", "hdetach", "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        if populated:
            populate(url, database_url)
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        assert st is not None
        command = [
            st,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "10",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--request-timeout",
            "30",
            "--seed",
            "1",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    finally:
        log = stop(server)
    out = result.stdout
    assert "Test cases:" in out, out[-4000:] + result.stderr[-2000:]  # the run got to its summary
    # every check runs; a 5xx, a dropped connection or a server traceback is what fails this test
    # (the other checks' findings are conformance questions, printed in the summary)
    failures = [line for line in out.splitlines() if any(code in line for code in SERVER_ERRORS)]
    assert not failures, out[-6000:]
    assert "Network Error" not in out and "Traceback" not in log, out[-3000:] + log[-3000:]

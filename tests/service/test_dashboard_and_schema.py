"""optuna-dashboard reads what the API and the workers wrote; schemathesis finds no 5xx in the API."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from studies.db.engine import normalise_url
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
        params = {p["name"] for p in trials[0]["params"]}
        assert params == {"variant", "p_detach", "lr", "seed"}
        assert [v["step"] for v in trials[0]["intermediate_values"]] == [3, 6, 9]
    finally:
        stop(dashboard)


def test_schemathesis_finds_no_server_error(database_url):
    # small limits keep generated studies small, so the run stays bounded in time
    port = free_port()
    env = {"HDETACH_API_TOKENS": TOKEN, "HDETACH_DATABASE_URL": database_url, "HDETACH_MAX_GRID_SIZE": "16"}
    server = start([sys.executable, "-m", "hdetach", "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        httpx.post(f"{url}/studies", json=SPEC, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        assert st is not None
        command = [
            st,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--exclude-path-regex",
            "/plots/|/report",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "30",
            "--seed",
            "1",
            "--no-color",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    finally:
        stop(server)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout

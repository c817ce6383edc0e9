"""A worker that halted after infrastructure failures says so over the API: GET /workers and /metrics."""

from __future__ import annotations

from tests.workers.test_worker_processes import TINY, start_worker


def test_a_halted_worker_shows_in_workers_and_metrics(server):
    api = server.client()
    assert api.post("/studies", json=TINY).status_code == 201
    worker = start_worker(
        server.database_url,
        "--max-infra-failures",
        "2",
        env={"HDETACH_TEST_FAULT": "curve-write:db-error", "HDETACH_POLL_SECONDS": "0.1"},
    )
    out, _ = worker.communicate(timeout=240)
    assert worker.returncode == 4, out

    (shown,) = api.get("/workers").json()
    assert shown["status"] == "halted" and shown["current_jobs"] == []
    assert shown["reason"].startswith("2 infrastructure failures in a row, the last: OperationalError")
    metrics = api.get("/metrics").text
    assert 'hdetach_workers{status="halted"} 1.0' in metrics
    assert 'hdetach_workers{status="running"} 0.0' in metrics
    assert 'hdetach_jobs{state="queued"} 12.0' in metrics  # given back, none failed

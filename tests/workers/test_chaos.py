"""The chaos run (tests/workers/chaos.py) on both databases: random SIGKILLs and dropped
connections while a study runs lose nothing, record nothing twice and spend no attempt."""

from __future__ import annotations

import pytest

from tests.workers.chaos import run_chaos


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kills_and_dropped_connections_lose_nothing(backend):
    report = run_chaos(backend, chaos_seconds=20, seed=11, seeds=8)  # 48 cells: outlasts the chaos
    assert report.problems == [], report
    assert report.worker_exits == [], report  # no worker died of anything but a SIGKILL
    assert report.kills_holding_jobs >= 2 and report.lost_leases > 0, report  # it really was chaotic
    if backend == "postgres":
        assert report.connections_dropped > 0, report

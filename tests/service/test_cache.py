"""Finished studies' summaries, reports and plots are kept in the API process and carry ETags.

Each study's results are recorded straight through the queue (claim, complete_many), so no training
runs. That a response came from the cache is shown by changing the stored results behind the
API's back: a cached response does not follow, a computed one does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.cache import Entry, ResponseCache
from studies import queue
from studies.db.engine import make_engine, session_factory
from studies.db.models import Job, Study, utcnow
from tests.service.test_studies_api import SPEC

PARTS = ["summary", "report", "plots/metric_vs_lr.svg", "plots/success_vs_lr.png"]


@pytest.fixture
def factory(server) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(server.database_url)
    yield session_factory(engine)
    engine.dispose()


def result(accuracy: float) -> dict:
    curve = [{"step": 3, "val_accuracy": accuracy / 2}, {"step": 9, "val_accuracy": accuracy}]
    return {"status": "completed", "final": {"accuracy": accuracy}, "curve": curve}


def accuracy(cell: int) -> float:
    return [0.2, 0.3, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7][cell]  # ties among the paired differences


def record(factory: sessionmaker[Session], job: queue.ClaimedJob) -> None:
    """The job's result, recorded as a worker records a pack's."""
    recorded = queue.complete_many(factory, [(job.job_id, job.lease_token, result(accuracy(job.cell_index)))])
    assert recorded == {job.job_id}


def claim_all(factory: sessionmaker[Session]) -> list[queue.ClaimedJob]:
    claimed = queue.claim(factory, "test-worker", 8, lease_seconds=600)
    assert len(claimed) == 8
    return sorted(claimed, key=lambda job: job.cell_index)


def finished_study(api, factory: sessionmaker[Session]) -> int:
    study_id = api.post("/studies", json=SPEC).json()["id"]
    for job in claim_all(factory):
        record(factory, job)
    assert api.get(f"/studies/{study_id}").json()["status"] == "done"
    return study_id


def rewrite_results(factory: sessionmaker[Session], study_id: int, value: float) -> None:
    """Change every stored result of the study, leaving the study row alone."""
    with factory.begin() as session:
        session.execute(
            update(Job).where(Job.study_id == study_id).values(result_json=json.dumps(result(value)))
        )


def test_a_finished_studys_responses_are_kept_with_etag_and_cache_control(server, factory):
    api = server.client()
    study_id = finished_study(api, factory)
    first = {part: api.get(f"/studies/{study_id}/{part}") for part in PARTS}
    for part, response in first.items():
        assert response.status_code == 200, part
        assert response.headers["x-cache"] == "miss", part
        assert response.headers["cache-control"] == "private, max-age=60"
        assert response.headers["etag"].startswith('"') and len(response.headers["etag"]) == 34
    summary = first["summary"].json()
    assert summary["complete"] is True and summary["done"] == 8
    assert summary["comparisons"][0]["wilcoxon_method"] == "exact"

    rewrite_results(factory, study_id, 0.9)  # the study row is unchanged: still the finished study
    for part in PARTS:
        again = api.get(f"/studies/{study_id}/{part}")
        assert again.headers["x-cache"] == "hit", part
        assert again.content == first[part].content, part  # kept, not recomputed from the new results
        assert again.headers["etag"] == first[part].headers["etag"]
    # other parameters: computed
    other = api.get(f"/studies/{study_id}/summary", params={"robust_level": 0.9})
    assert other.headers["x-cache"] == "miss" and other.json()["variants"][0]["best_mean"] == 0.9
    assert api.get(f"/studies/{study_id}/trials").json()["items"][0]["metric"] == 0.9  # trials are not cached


def test_if_none_match_gives_304_without_a_body(server, factory):
    api = server.client()
    study_id = finished_study(api, factory)
    for part in PARTS:
        url = f"/studies/{study_id}/{part}"
        etag = api.get(url).headers["etag"]
        for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            not_modified = api.get(url, headers={"If-None-Match": header})
            assert not_modified.status_code == 304, (part, header)
            assert not_modified.content == b""
            assert not_modified.headers["etag"] == etag
            assert not_modified.headers["cache-control"] == "private, max-age=60"
        assert api.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_running_study_is_computed_per_request_and_revalidated(server, factory):
    api = server.client()
    study_id = api.post("/studies", json=SPEC).json()["id"]
    url = f"/studies/{study_id}/summary"
    queued = api.get(url)
    assert queued.json()["done"] == 0 and queued.headers["x-cache"] == "bypass"
    assert queued.headers["cache-control"] == "private, no-cache"
    assert api.get(url, headers={"If-None-Match": queued.headers["etag"]}).status_code == 304

    jobs = claim_all(factory)
    etags = set()
    for done, job in enumerate(jobs, start=1):
        record(factory, job)
        response = api.get(url, headers={"If-None-Match": queued.headers["etag"]})
        assert response.status_code == 200 and response.json()["done"] == done
        expected = "miss" if done == len(jobs) else "bypass"  # the last result finishes the study
        assert response.headers["x-cache"] == expected
        etags.add(response.headers["etag"])
        for part in PARTS[1:]:
            assert api.get(f"/studies/{study_id}/{part}").headers["x-cache"] == expected
    assert len(etags) == len(jobs)  # every new result gave a new summary and a new tag
    assert api.get(url).headers["x-cache"] == "hit"


def test_a_study_that_runs_again_is_not_served_from_the_cache(server, factory):
    # a study re-queued after it finished: its status, then its finished_at, change
    api = server.client()
    study_id = finished_study(api, factory)
    before = {part: api.get(f"/studies/{study_id}/{part}").content for part in PARTS}
    rewrite_results(factory, study_id, 0.9)
    with factory.begin() as session:
        session.execute(update(Study).where(Study.id == study_id).values(status="running", finished_at=None))
    for part in PARTS:
        running = api.get(f"/studies/{study_id}/{part}")
        assert running.headers["x-cache"] == "bypass" and running.content != before[part], part
    with factory.begin() as session:
        session.execute(update(Study).where(Study.id == study_id).values(status="done", finished_at=utcnow()))
    for part in PARTS:
        assert api.get(f"/studies/{study_id}/{part}").headers["x-cache"] == "miss", part
    assert api.get(f"/studies/{study_id}/summary").json()["variants"][0]["best_mean"] == 0.9


def test_a_deleted_study_is_404_not_a_kept_response(server, factory):
    api = server.client()
    study_id = finished_study(api, factory)
    for part in PARTS:
        api.get(f"/studies/{study_id}/{part}")
        assert api.get(f"/studies/{study_id}/{part}").headers["x-cache"] == "hit"
    assert api.delete(f"/studies/{study_id}").status_code == 204
    for part in PARTS:
        assert api.get(f"/studies/{study_id}/{part}").status_code == 404, part


def test_the_cache_is_bounded_in_entries_and_bytes():
    cache = ResponseCache(max_entries=3, max_bytes=100)
    for key in "abc":
        cache.put(key, Entry.of(b"x" * 10, "text/plain"))
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", Entry.of(b"x" * 10, "text/plain"))
    assert len(cache) == 3 and cache.get("b") is None and cache.get("a") is not None
    cache.put("e", Entry.of(b"y" * 85, "text/plain"))  # 10 + 10 + 85 > 100: the oldest goes
    assert cache.get("c") is None and cache.get("e") is not None and len(cache) == 2
    cache.put("huge", Entry.of(b"z" * 101, "text/plain"))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2
    assert Entry.of(b"same", "a").etag == Entry.of(b"same", "b").etag != Entry.of(b"other", "a").etag

"""The job queue's contract, run against SQLite and PostgreSQL alike (as Optuna's STORAGE_MODES).

PostgreSQL: a fresh database per test session on HDETACH_TEST_POSTGRES_URL (default: the local
server); if the server is unreachable these tests fail rather than skip.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from studies import queue
from studies.db import (
    Base,
    ExecutorKind,
    Job,
    Study,
    Worker,
    make_engine,
    run_transaction,
    session_factory,
    upgrade,
)
from studies.db.engine import VERSION_TABLE, alembic_config
from studies.db.models import WorkerStatus
from studies.exceptions import Conflict, KeyReused, NotFound, SpecError
from studies.queue.retry import MAX_LOST_LEASES
from studies.spec import SpecLimits, StudySpec

PG_URL = os.environ.get("HDETACH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 60.0
FORK = mp.get_context("fork")  # children inherit the imports; each opens its own engine


# -- test data -------------------------------------------------------------------------------
def make_spec(
    name: str = "study",
    *,
    priority: int = 0,
    hidden_size: int = 8,
    variants: int = 2,
    lrs: tuple[float, ...] = (1e-3, 1e-2),
    seeds: tuple[int, ...] = (0, 1),
) -> StudySpec:
    all_variants = [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}]
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"name": "copying", "T": 5},
            "model": {"hidden_size": hidden_size},
            "variants": all_variants[:variants],
            "learning_rates": list(lrs),
            "seeds": list(seeds),
            "budget": {"steps": 10, "eval_every": 5},
            "priority": priority,
        }
    )


# -- backends --------------------------------------------------------------------------------
@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the server (dropped afterwards); its URL."""
    admin = make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"hdetach_test_{uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.db'}"
        upgrade(url)
        return url
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE hd_jobs, hd_studies, hd_workers RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def rows(factory: sessionmaker[Session], model: type[Any]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


# -- submit ----------------------------------------------------------------------------------
def test_submit_creates_one_job_per_cell(factory: sessionmaker[Session]) -> None:
    spec = make_spec("grid", priority=7)
    study_id = queue.submit_study(factory, spec, max_attempts=4)

    study = queue.get_study(factory, study_id)
    jobs = queue.list_jobs(factory, study_id)
    assert (study.status, study.priority, study.optuna_study_name) == (
        "queued",
        7,
        f"hdetach-{study_id}-grid",
    )
    assert StudySpec.model_validate_json(study.spec_json) == spec
    assert [(j.cell_index, j.variant, j.p_detach, j.lr, j.seed) for j in jobs] == [
        (c.index, c.variant, c.p_detach, c.lr, c.seed) for c in spec.cells()
    ]
    assert {(j.state, j.priority, j.max_attempts, j.attempts, j.pack_key) for j in jobs} == {
        ("queued", 7, 4, 0, queue.pack_key(spec))
    }
    assert queue.job_counts(factory, study_id) == {
        "queued": 8,
        "running": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert study.created_at.tzinfo is not None and study.created_at.utcoffset() == timedelta(0)


def test_submit_rejects_a_bad_spec_before_writing(factory: sessionmaker[Session]) -> None:
    data = make_spec().model_dump(mode="json") | {"seeds": [1, 1]}
    with pytest.raises(SpecError) as caught:
        queue.submit_study(factory, data)
    assert caught.value.errors[0]["loc"] == ("seeds",)
    with pytest.raises(SpecError, match="grid of 8 trials exceeds"):
        queue.submit_study(factory, make_spec().model_dump(mode="json"), limits=SpecLimits(max_grid_size=4))
    assert rows(factory, Study) == rows(factory, Job) == 0


def test_an_idempotency_key_submits_once(factory: sessionmaker[Session]) -> None:
    first = queue.submit_study_once(factory, make_spec("k"), "key-1")
    assert first == queue.Submission(first.study_id, replayed=False)
    assert queue.submit_study_once(factory, make_spec("k"), "key-1") == (first.study_id, True)
    with pytest.raises(KeyReused, match=f"study {first.study_id}"):
        queue.submit_study_once(factory, make_spec("other"), "key-1")
    second = queue.submit_study_once(factory, make_spec("k"), "key-2")  # a new key: a new study
    untracked = queue.submit_study_once(factory, make_spec("k"), None)  # no key: no promise
    assert len({first.study_id, second.study_id, untracked.study_id}) == 3
    assert (rows(factory, Study), rows(factory, Job)) == (3, 24)


def test_submit_is_one_transaction(factory: sessionmaker[Session]) -> None:
    def broken_name(study_id: int, name: str) -> str:
        raise RuntimeError("after the study row was flushed")

    with pytest.raises(RuntimeError):
        queue.submit_study(factory, make_spec(), optuna_study_name_fn=broken_name)
    assert rows(factory, Study) == rows(factory, Job) == 0

    queue.submit_study(factory, make_spec("a"), optuna_study_name_fn=lambda i, n: "taken")
    with pytest.raises(Conflict):
        queue.submit_study(factory, make_spec("b"), optuna_study_name_fn=lambda i, n: "taken")
    assert (rows(factory, Study), rows(factory, Job)) == (1, 8)


# -- claim -----------------------------------------------------------------------------------
def test_claim_takes_the_highest_priority_first(factory: sessionmaker[Session]) -> None:
    low = queue.submit_study(factory, make_spec("low", priority=0))
    high = queue.submit_study(factory, make_spec("high", priority=5))  # same config: one pack key

    claimed = queue.claim(factory, "w", max_jobs=9, lease_seconds=LEASE)
    then = queue.claim(factory, "w", max_jobs=9, lease_seconds=LEASE)

    assert [j.study_id for j in claimed] == [high] * 8  # one study per pack, though room is left
    assert [j.study_id for j in then] == [low] * 8
    assert queue.get_study(factory, high).status == queue.get_study(factory, low).status == "running"


def test_equal_priority_studies_take_turns(factory: sessionmaker[Session]) -> None:
    a = queue.submit_study(factory, make_spec("a"))
    b = queue.submit_study(factory, make_spec("b"))

    order = [queue.claim(factory, "w", max_jobs=1, lease_seconds=LEASE)[0].study_id for _ in range(6)]

    assert order == [a, b, a, b, a, b]


def test_claim_packs_one_pack_key_and_never_exceeds_max_jobs(factory: sessionmaker[Session]) -> None:
    small = queue.submit_study(factory, make_spec("small", variants=1, lrs=(1e-3,)))  # 2 jobs
    big = queue.submit_study(factory, make_spec("big", hidden_size=16))  # 8 jobs, another pack key

    first = queue.claim(factory, "w1", max_jobs=3, lease_seconds=LEASE, now=T0)
    second = queue.claim(factory, "w2", max_jobs=3, lease_seconds=LEASE, now=T0)

    assert [j.study_id for j in first] == [small, small]  # the head's pack only, though room is left
    assert [j.study_id for j in second] == [big] * 3
    assert len({j.pack_key for j in second}) == 1 and second[0].pack_key != first[0].pack_key
    assert len({j.lease_token for j in first + second}) == 5
    assert {(j.attempt, j.lease_expires_at) for j in second} == {(1, T0 + timedelta(seconds=LEASE))}
    job = queue.get_job(factory, second[0].job_id)
    assert (job.state, job.worker_id, job.started_at, job.lease_token) == (
        "running",
        "w2",
        T0,
        second[0].lease_token,
    )


def test_a_pack_never_mixes_studies_even_when_their_shapes_match(factory: sessionmaker[Session]) -> None:
    # the same spec submitted twice, the second with more seeds: equal pack keys
    first_id = queue.submit_study(factory, make_spec("same", seeds=(1, 2)))  # 8 jobs
    second_id = queue.submit_study(factory, make_spec("same", seeds=(1, 2, 3)))  # 12 jobs

    packs = [queue.claim(factory, f"w{i}", max_jobs=16, lease_seconds=LEASE, now=T0) for i in range(3)]

    assert [{j.study_id for j in pack} for pack in packs] == [{first_id}, {second_id}, set()]
    assert [len(pack) for pack in packs] == [8, 12, 0]
    assert packs[0][0].pack_key == packs[1][0].pack_key


def test_claim_returns_nothing_when_the_queue_is_empty(factory: sessionmaker[Session]) -> None:
    assert queue.claim(factory, "w", max_jobs=4, lease_seconds=LEASE) == []
    with pytest.raises(ValueError):
        queue.claim(factory, "w", max_jobs=0, lease_seconds=LEASE)


def _claim_until_empty(url: str, worker: str, start: Any, out: Any) -> None:
    engine = make_engine(url)
    factory = session_factory(engine)
    claimed: list[int] = []
    try:
        start.wait()
        while batch := queue.claim(factory, worker, max_jobs=3, lease_seconds=LEASE):
            for job in batch:
                claimed.append(job.job_id)
                recorded = queue.complete_many(factory, [(job.job_id, job.lease_token, {"by": worker})])
                assert recorded == {job.job_id}
        out.put((worker, claimed, None))
    except BaseException as exc:
        out.put((worker, claimed, repr(exc)))
    finally:
        engine.dispose()


def test_concurrent_claims_never_hand_out_a_job_twice(db_url: str, factory: sessionmaker[Session]) -> None:
    ids = [
        queue.submit_study(factory, make_spec(f"s{k}", hidden_size=8 + k % 2, seeds=(0, 1, 2, 3)))
        for k in range(3)
    ]
    start, out = FORK.Barrier(4), FORK.Queue()
    workers = [FORK.Process(target=_claim_until_empty, args=(db_url, f"w{k}", start, out)) for k in range(4)]
    for process in workers:
        process.start()
    reports = [out.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(timeout=30)

    assert [error for _, _, error in reports if error] == []
    counts = Counter(job_id for _, claimed, _ in reports for job_id in claimed)
    jobs = [job for study_id in ids for job in queue.list_jobs(factory, study_id)]
    assert sorted(counts) == sorted(job.id for job in jobs) and set(counts.values()) == {1}
    assert {(job.state, job.attempts) for job in jobs} == {("done", 1)}
    assert {queue.get_study(factory, study_id).status for study_id in ids} == {"done"}


# -- leases ----------------------------------------------------------------------------------
def test_heartbeat_extends_held_leases_and_reports_lost_ones(factory: sessionmaker[Session]) -> None:
    queue.register_worker(factory, "w", "host", 1, "cpu", 4, now=T0)
    study_id = queue.submit_study(factory, make_spec())
    a, b = queue.claim(factory, "w", max_jobs=2, lease_seconds=LEASE, now=T0)
    later = T0 + timedelta(seconds=30)

    reply = queue.heartbeat(
        factory, "w", {a.job_id: a.lease_token, b.job_id: "stale", 999: "x"}, LEASE, now=later
    )

    assert (reply.held, reply.lost, reply.cancelled) == ({a.job_id}, {b.job_id, 999}, frozenset())
    assert queue.get_job(factory, a.job_id).lease_expires_at == later + timedelta(seconds=LEASE)
    assert queue.get_job(factory, b.job_id).lease_expires_at == T0 + timedelta(seconds=LEASE)
    assert queue.list_workers(factory)[0].last_heartbeat == later

    queue.cancel_study(factory, study_id)
    reply = queue.heartbeat(factory, "w", {a.job_id: a.lease_token}, LEASE, now=later)
    assert (reply.held, reply.cancelled) == ({a.job_id}, {a.job_id})


def test_complete_records_the_result_exactly_once(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0,)))
    (job,) = queue.claim(factory, "w", max_jobs=1, lease_seconds=LEASE)
    assert queue.set_optuna_trials(factory, [(job.job_id, job.lease_token, 41)]) == {job.job_id}
    assert queue.set_optuna_trials(factory, [(job.job_id, "not-the-token", 42)]) == set()

    assert queue.complete_many(factory, [(job.job_id, job.lease_token, {"accuracy": 0.5})]) == {job.job_id}
    assert queue.complete_many(factory, [(job.job_id, job.lease_token, {"accuracy": 0.9})]) == set()
    assert queue.complete_many(factory, [(job.job_id, "not-the-token", {"accuracy": 0.9})]) == set()
    assert not queue.fail(factory, job.job_id, job.lease_token, "too late")

    stored = queue.get_job(factory, job.job_id)
    assert (stored.state, json.loads(stored.result_json or ""), stored.lease_token) == (
        "done",
        {"accuracy": 0.5},
        None,
    )
    assert (stored.optuna_trial_id, stored.last_error) == (41, None)
    study = queue.get_study(factory, study_id)
    assert study.status == "done" and study.finished_at is not None


def test_reap_requeues_expired_leases_and_rejects_the_late_report(factory: sessionmaker[Session]) -> None:
    queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0,)))
    (old,) = queue.claim(factory, "w1", max_jobs=1, lease_seconds=10, now=T0)
    queue.set_optuna_trials(factory, [(old.job_id, old.lease_token, 7)])

    assert queue.reap(factory, now=T0 + timedelta(seconds=5)) == []
    (reaped,) = queue.reap(factory, now=T0 + timedelta(seconds=11))

    assert (reaped.job_id, reaped.optuna_trial_id, reaped.state, reaped.worker_id) == (
        old.job_id,
        7,
        "queued",
        "w1",
    )
    job = queue.get_job(factory, old.job_id)
    assert (job.state, job.lease_token, job.optuna_trial_id, job.last_error) == (
        "queued",
        None,
        None,
        "lease expired (worker w1)",
    )
    assert (job.attempts, job.lost_leases) == (0, 1)  # the worker died, not the trial: no attempt spent
    (new,) = queue.claim(factory, "w2", max_jobs=1, lease_seconds=10, now=T0 + timedelta(seconds=12))
    assert (new.job_id, new.attempt) == (old.job_id, 1) and new.lease_token != old.lease_token
    assert queue.complete_many(factory, [(old.job_id, old.lease_token, {"from": "w1"})]) == set()
    assert queue.complete_many(factory, [(new.job_id, new.lease_token, {"from": "w2"})]) == {new.job_id}
    assert json.loads(queue.get_job(factory, old.job_id).result_json or "") == {"from": "w2"}


def test_fail_retries_until_max_attempts_then_fails(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0,)), max_attempts=3)

    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert queue.fail(factory, job.job_id, job.lease_token, "boom 1")
    assert queue.get_job(factory, job.job_id).state == "queued"
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert queue.release(factory, job.job_id, job.lease_token, "worker stopping")  # not counted
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert (
        job.attempt == 2 and queue.reap(factory, now=T0 + timedelta(seconds=LEASE + 1))[0].state == "queued"
    )  # a lost lease is not counted
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert job.attempt == 2
    assert queue.fail(factory, job.job_id, job.lease_token, "boom 2")
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert job.attempt == 3
    assert queue.fail(factory, job.job_id, job.lease_token, "boom 3")

    stored = queue.get_job(factory, job.job_id)
    assert (stored.state, stored.attempts, stored.last_error) == ("failed", 3, "boom 3")
    assert queue.claim(factory, "w", 1, LEASE) == []
    assert queue.get_study(factory, study_id).status == "failed"


def test_lost_leases_spend_no_attempt_but_a_job_that_always_loses_its_lease_ends(
    factory: sessionmaker[Session],
) -> None:
    queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0,)), max_attempts=1)
    states = []
    for k in range(MAX_LOST_LEASES):
        now = T0 + timedelta(seconds=k * (LEASE + 1))
        (job,) = queue.claim(factory, "w", 1, LEASE, now=now)
        assert job.attempt == 1  # the one attempt allowed is never spent by a lost lease
        (reaped,) = queue.reap(factory, now=now + timedelta(seconds=LEASE + 1))
        states.append(reaped.state)
    assert states == ["queued"] * (MAX_LOST_LEASES - 1) + ["failed"]
    stored = queue.get_job(factory, job.job_id)
    assert (stored.state, stored.attempts, stored.lost_leases) == ("failed", 0, MAX_LOST_LEASES)
    assert "lease was lost 10 times" in (stored.last_error or "")


# -- cancel and delete -----------------------------------------------------------------------
# -- requeue ---------------------------------------------------------------------------------
def _fail_for_good(factory: sessionmaker[Session], max_attempts: int) -> None:
    for attempt in range(1, max_attempts + 1):
        (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
        assert job.attempt == attempt
        assert queue.fail(factory, job.job_id, job.lease_token, f"boom {attempt}")


def test_requeue_failed_reopens_a_finished_study_with_new_attempts_and_trials(
    factory: sessionmaker[Session],
) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0, 1)), max_attempts=2)
    (done,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert queue.complete_many(factory, [(done.job_id, done.lease_token, {"final": {"accuracy": 1.0}})])
    _fail_for_good(factory, 2)  # the other cell
    assert queue.get_study(factory, study_id).status == "done"

    result = queue.requeue_failed(factory, study_id, extra_attempts=2)
    assert (result.requeued, result.status) == (1, "running")
    study = queue.get_study(factory, study_id)
    assert (study.status, study.finished_at) == ("running", None)
    (job,) = queue.claim(factory, "w", 2, LEASE, now=T0)  # the failed cell; the done one keeps its result
    assert job.job_id != done.job_id and job.attempt == 3  # a new attempt, counted on
    assert queue.set_optuna_trials(factory, [(job.job_id, job.lease_token, 99)]) == {job.job_id}
    assert queue.fail(factory, job.job_id, job.lease_token, "boom 3")  # 2 more attempts: retried
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert job.attempt == 4 and queue.get_job(factory, job.job_id).optuna_trial_id is None  # a new trial
    assert queue.fail(factory, job.job_id, job.lease_token, "boom 4")
    stored = queue.get_job(factory, job.job_id)
    assert (stored.state, stored.attempts, stored.last_error) == ("failed", 4, "boom 4")
    assert queue.get_study(factory, study_id).status == "done"  # settled again
    assert json.loads(queue.get_job(factory, done.job_id).result_json or "") == {"final": {"accuracy": 1.0}}


def test_requeue_failed_with_nothing_failed_changes_nothing(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0,)))
    (job,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    assert queue.complete_many(factory, [(job.job_id, job.lease_token, {})])
    before = queue.get_study(factory, study_id)
    result = queue.requeue_failed(factory, study_id, extra_attempts=3)
    assert (result.requeued, result.status) == (0, "done")
    after = queue.get_study(factory, study_id)
    assert (after.status, after.finished_at) == ("done", before.finished_at)
    assert after.updated_at == before.updated_at


def test_requeue_failed_refuses_a_cancelled_or_unknown_study_and_writes_nothing(
    factory: sessionmaker[Session],
) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0, 1)), max_attempts=1)
    _fail_for_good(factory, 1)
    (running,) = queue.claim(factory, "w", 1, LEASE, now=T0)
    queue.cancel_study(factory, study_id)  # one cell failed, one still running: cancel requested
    with pytest.raises(Conflict, match="cancelled"):
        queue.requeue_failed(factory, study_id, extra_attempts=1)
    assert queue.job_counts(factory, study_id)["failed"] == 1  # rolled back
    assert queue.cancel_job(factory, running.job_id, running.lease_token)
    assert queue.get_study(factory, study_id).status == "cancelled"
    with pytest.raises(Conflict, match="cancelled"):
        queue.requeue_failed(factory, study_id, extra_attempts=1)
    with pytest.raises(NotFound):
        queue.requeue_failed(factory, study_id + 100, extra_attempts=1)


def test_cancel_study_cancels_queued_jobs_and_flags_running_ones(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec())
    (running,) = queue.claim(factory, "w", max_jobs=1, lease_seconds=LEASE)

    result = queue.cancel_study(factory, study_id)

    assert (result.status, result.cancelled_jobs, result.running_jobs) == ("running", 7, 1)
    assert queue.get_study(factory, study_id).cancel_requested
    assert queue.claim(factory, "w", max_jobs=8, lease_seconds=LEASE) == []
    assert queue.cancel_job(factory, running.job_id, running.lease_token)
    assert queue.job_counts(factory, study_id)["cancelled"] == 8
    study = queue.get_study(factory, study_id)
    assert study.status == "cancelled" and study.finished_at is not None


def test_nothing_is_claimed_from_a_study_whose_cancel_is_in_flight(factory: sessionmaker[Session]) -> None:
    """Cancelling turns queued jobs into cancelled ones in one transaction; a release or a reap that
    read the study before the cancel committed may still put a job back to queued. Stand in for
    that race: the study says cancel_requested while its jobs are queued. None may be claimed."""
    cancelling = queue.submit_study(factory, make_spec("cancelling"))
    other = queue.submit_study(factory, make_spec("other", hidden_size=16))  # claimed after it, if at all

    def flag(session: Session) -> None:
        session.get(Study, cancelling).cancel_requested = True

    run_transaction(factory, flag)
    claimed = queue.claim(factory, "w", max_jobs=8, lease_seconds=LEASE)
    assert claimed and {job.study_id for job in claimed} == {other}
    assert queue.job_counts(factory, cancelling)["queued"] == 8


def test_cancel_study_with_nothing_running_is_cancelled_at_once(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec())
    assert queue.cancel_study(factory, study_id).status == "cancelled"
    with pytest.raises(NotFound):
        queue.cancel_study(factory, study_id + 1)


def test_delete_refuses_while_jobs_run(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec())
    (job,) = queue.claim(factory, "w", max_jobs=1, lease_seconds=LEASE)
    queue.cancel_study(factory, study_id)

    with pytest.raises(Conflict):
        queue.delete_study(factory, study_id)
    assert queue.cancel_job(factory, job.job_id, job.lease_token)
    queue.delete_study(factory, study_id)

    assert rows(factory, Study) == rows(factory, Job) == 0  # the jobs went with it (ON DELETE CASCADE)
    with pytest.raises(NotFound):
        queue.get_study(factory, study_id)


def test_list_studies_filters_and_pages(factory: sessionmaker[Session]) -> None:
    ids = [queue.submit_study(factory, make_spec(f"s{k}")) for k in range(3)]
    queue.cancel_study(factory, ids[0])
    assert [s.id for s in queue.list_studies(factory)] == ids[::-1]
    assert [s.id for s in queue.list_studies(factory, status="queued", offset=1, limit=1)] == [ids[1]]


def test_workers_register_and_stop(factory: sessionmaker[Session]) -> None:
    queue.register_worker(factory, "old", "host", 1, "cpu", 2, now=T0)
    queue.register_worker(factory, "new", "host", 2, "cuda:0", 8, now=T0 + timedelta(seconds=100))
    queue.worker_stopped(factory, "old", now=T0 + timedelta(seconds=100))

    assert [(w.id, w.status) for w in queue.list_workers(factory)] == [("new", "running"), ("old", "stopped")]
    alive = queue.list_workers(factory, alive_within=30, now=T0 + timedelta(seconds=110))
    assert [w.id for w in alive] == ["new"]


def test_the_reaper_marks_silent_workers_stopped(factory: sessionmaker[Session]) -> None:
    """A SIGKILLed worker sends no more heartbeats; it must not stay 'running' in /workers."""
    queue.register_worker(factory, "killed", "host", 1, "cpu", 2, now=T0)
    queue.register_worker(factory, "alive", "host", 2, "cpu", 2, now=T0 + timedelta(seconds=100))
    queue.register_worker(factory, "halted", "host", 3, "cpu", 2, now=T0)
    queue.set_worker_status(factory, "halted", WorkerStatus.HALTED, now=T0, reason="3 failures")

    queue.reap(factory, now=T0 + timedelta(seconds=110))  # not asked: nothing changes
    assert {w.id: w.status for w in queue.list_workers(factory)}["killed"] == "running"
    queue.reap(factory, now=T0 + timedelta(seconds=110), silent_after=60)

    workers = {w.id: (w.status, w.reason) for w in queue.list_workers(factory)}
    assert workers == {
        "killed": ("stopped", "no heartbeat for over 60 s"),
        "alive": ("running", None),
        "halted": ("halted", "3 failures"),
    }


# -- transactions --------------------------------------------------------------------------
class _DeadlockVictim(Exception):
    sqlstate = "40P01"  # as psycopg reports it


def test_run_transaction_retries_a_deadlock_victim_only(factory: sessionmaker[Session]) -> None:
    calls: list[str] = []

    def work(session: Session) -> int:
        calls.append("try")
        session.add(Worker(id=f"w{len(calls)}", hostname="h", pid=1, device="cpu", pack_size=1))
        session.flush()
        if len(calls) == 1:
            raise OperationalError("UPDATE hd_jobs ...", {}, _DeadlockVictim())
        return len(calls)

    assert run_transaction(factory, work) == 2
    assert [w.id for w in queue.list_workers(factory)] == ["w2"]  # the first try was rolled back
    with pytest.raises(ZeroDivisionError):
        run_transaction(factory, lambda session: 1 // 0)


# -- engines ---------------------------------------------------------------------------------
def test_queue_workers_leave_ray_studies_to_a_ray_driver(factory: sessionmaker[Session]) -> None:
    ray_study = queue.submit_study(factory, make_spec("on-ray").model_copy(update={"engine": "ray"}))
    assert queue.get_study(factory, ray_study).engine == "ray"
    assert queue.claim(factory, "queue-worker", 8, LEASE, now=T0) == []
    assert queue.unfinished_jobs(factory, ExecutorKind.QUEUE) == 0
    assert queue.unfinished_jobs(factory, ExecutorKind.RAY) == queue.unfinished_jobs(factory) == 8

    queue_study = queue.submit_study(factory, make_spec("on-queue", hidden_size=9))
    assert {j.study_id for j in queue.claim(factory, "queue-worker", 8, LEASE, now=T0)} == {queue_study}
    driver = queue.claim(factory, "ray-driver", 8, LEASE, now=T0, engine=ExecutorKind.RAY)
    assert {j.study_id for j in driver} == {ray_study} and len(driver) == 8


def test_a_driver_can_claim_one_named_study_of_any_engine(factory: sessionmaker[Session]) -> None:
    first = queue.submit_study(factory, make_spec("first"))
    second = queue.submit_study(factory, make_spec("second"))
    jobs = queue.claim(factory, "ray-driver", 8, LEASE, now=T0, engine=None, study_id=second)
    assert {j.study_id for j in jobs} == {second} and len(jobs) == 8
    assert queue.job_counts(factory, first)["queued"] == 8


def test_retry_held_counts_an_attempt_under_the_same_lease(factory: sessionmaker[Session]) -> None:
    queue.submit_study(factory, make_spec(), max_attempts=2)
    job = queue.claim(factory, "ray-driver", 1, LEASE, now=T0, engine=None)[0]
    assert queue.set_optuna_trials(factory, [(job.job_id, job.lease_token, 41)]) == {job.job_id}
    assert queue.retry_held(factory, job.job_id, job.lease_token, "boom") == 2
    row = queue.get_job(factory, job.job_id)
    assert (row.state, row.attempts, row.last_error, row.optuna_trial_id) == ("running", 2, "boom", None)
    assert queue.retry_held(factory, job.job_id, "not-the-token", "late") is None
    # the last attempt failing ends the job: attempts are at max_attempts
    assert queue.fail(factory, job.job_id, job.lease_token, "boom again")
    assert queue.get_job(factory, job.job_id).state == "failed"


# -- migrations ------------------------------------------------------------------------------
def _upgrade(url: str) -> None:
    upgrade(url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_is_idempotent_and_safe_to_run_at_once(backend: str, tmp_path: Path) -> None:
    with (
        fresh_postgres_database() if backend == "postgres" else nullcontext(f"sqlite:///{tmp_path / 'm.db'}")
    ) as url:
        racers = [FORK.Process(target=_upgrade, args=(url,)) for _ in range(3)]
        for process in racers:
            process.start()
        for process in racers:
            process.join(timeout=60)
        assert [p.exitcode for p in racers] == [0, 0, 0]
        upgrade(url)

        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
                assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [(head,)]
                assert {"hd_studies", "hd_jobs", "hd_workers"} <= set(inspect(connection).get_table_names())
                ours = {"include_name": lambda name, kind, _: kind != "table" or name in Base.metadata.tables}
                context = MigrationContext.configure(connection, opts=ours)
                assert compare_metadata(context, Base.metadata) == []  # the migrations build the models
        finally:
            engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_keeps_the_studies_of_an_older_schema(backend: str, tmp_path: Path) -> None:
    """0002 adds hd_studies.engine: studies submitted before it are queue studies, their jobs kept
    (SQLite rebuilds hd_studies: with foreign keys on, that emptied hd_jobs), and a deleted
    study's id is never given again."""
    with (
        fresh_postgres_database() if backend == "postgres" else nullcontext(f"sqlite:///{tmp_path / 'm.db'}")
    ) as url:
        upgrade(url, "0001")
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO hd_studies (name, spec_json, status, priority, cancel_requested,"
                        " optuna_study_name, created_at, updated_at)"
                        " VALUES ('old', '{}', 'done', 0, false, 'old-study', :now, :now)"
                    ),
                    {"now": datetime(2026, 1, 1)},
                )
                connection.execute(
                    text(
                        "INSERT INTO hd_jobs (study_id, cell_index, variant, p_detach, lr, seed, pack_key,"
                        " priority, state, attempts, max_attempts, result_json, created_at)"
                        " SELECT id, 0, 'vanilla', 0.0, 0.01, 1, 'k', 0, 'done', 1, 3, '{}', :now"
                        " FROM hd_studies"
                    ),
                    {"now": datetime(2026, 1, 1)},
                )
            upgrade(url)
            with engine.connect() as connection:
                assert connection.execute(text("SELECT name, engine FROM hd_studies")).all() == [
                    ("old", "queue")
                ]
                assert connection.execute(text("SELECT count(*) FROM hd_jobs")).scalar() == 1
            factory = session_factory(engine)
            newest = queue.submit_study(factory, make_spec("new"))
            queue.delete_study(factory, newest)
            assert queue.submit_study(factory, make_spec("newer")) > newest
            refused = pytest.raises(IntegrityError, match=r"engine_valid|CHECK constraint")
            with refused, engine.begin() as connection:
                connection.execute(text("UPDATE hd_studies SET engine = 'spark'"))
        finally:
            engine.dispose()


def test_the_reaper_settles_a_study_whose_last_completion_was_not_followed_by_settling(
    factory: sessionmaker[Session],
) -> None:
    """On PostgreSQL a completion and the settling of its study are two transactions; a process
    dying between them leaves every job ended and the study running, until the reaper passes."""
    study_id = queue.submit_study(factory, make_spec())
    with factory.begin() as session:  # what that dead process left behind
        session.execute(text("UPDATE hd_jobs SET state = 'done' WHERE study_id = :s"), {"s": study_id})
        session.execute(text("UPDATE hd_studies SET status = 'running' WHERE id = :s"), {"s": study_id})
    assert queue.get_study(factory, study_id).status == "running"
    assert queue.reap(factory, now=T0) == []
    assert queue.get_study(factory, study_id).status == "done"


def test_a_packs_trials_are_recorded_only_where_the_lease_is_held(factory: sessionmaker[Session]) -> None:
    queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0, 1, 2)))
    a, b, c = queue.claim(factory, "w", max_jobs=3, lease_seconds=LEASE)
    # c no longer running
    assert queue.complete_many(factory, [(c.job_id, c.lease_token, {"accuracy": 0.5})]) == {c.job_id}
    held = queue.set_optuna_trials(
        factory, [(a.job_id, a.lease_token, 11), (b.job_id, "stale", 12), (c.job_id, c.lease_token, 13)]
    )
    assert held == {a.job_id}
    assert [queue.get_job(factory, j.job_id).optuna_trial_id for j in (a, b, c)] == [11, None, None]
    assert queue.set_optuna_trials(factory, []) == set()


def test_a_packs_results_are_recorded_in_one_go_each_exactly_once(factory: sessionmaker[Session]) -> None:
    study_id = queue.submit_study(factory, make_spec(variants=1, lrs=(1e-3,), seeds=(0, 1, 2)))
    a, b, c = queue.claim(factory, "w", max_jobs=3, lease_seconds=LEASE)
    # c reported already
    assert queue.complete_many(factory, [(c.job_id, c.lease_token, {"accuracy": 0.1})]) == {c.job_id}
    recorded = queue.complete_many(
        factory,
        [
            (a.job_id, a.lease_token, {"accuracy": 0.5}),
            (b.job_id, "stale", {"accuracy": 0.6}),
            (c.job_id, c.lease_token, {"accuracy": 0.7}),
        ],
    )
    assert recorded == {a.job_id}
    jobs = [queue.get_job(factory, j.job_id) for j in (a, b, c)]
    assert [(j.state, j.result_json and json.loads(j.result_json)) for j in jobs] == [
        ("done", {"accuracy": 0.5}),
        ("running", None),
        ("done", {"accuracy": 0.1}),
    ]
    assert queue.get_study(factory, study_id).status == "running"  # b still runs
    assert queue.complete_many(factory, [(b.job_id, b.lease_token, {"accuracy": 0.6})]) == {b.job_id}
    assert queue.get_study(factory, study_id).status == "done"
    assert queue.complete_many(factory, []) == set()


@pytest.mark.postgres
@pytest.mark.parametrize("runner", ["run_transaction", "run_core_transaction", "run_autocommit"])
def test_a_connection_the_server_dropped_is_retried_once_on_a_fresh_one(postgres_url, runner) -> None:
    """pool_pre_ping is off in queue processes: the retry is what survives a server restart."""
    from studies.db import engine as db_engine

    run = getattr(db_engine, runner)
    engine = make_engine(postgres_url, pool_pre_ping=False)
    admin = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    factory = session_factory(engine)

    def backend_pid(handle: Any) -> int:
        return handle.execute(text("SELECT pg_backend_pid()")).scalar()

    def drop_pooled_connections() -> None:
        pids = {run(factory, backend_pid)}  # the connection(s) now sitting in the pool
        with admin.connect() as connection:
            for pid in pids:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    drop_pooled_connections()
    with pytest.raises(OperationalError):
        run(factory, backend_pid, attempts=1)  # no retry: the dead connection's error surfaces
    drop_pooled_connections()
    assert run(factory, backend_pid) > 0  # retried on a new connection
    engine.dispose()
    admin.dispose()

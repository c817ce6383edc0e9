"""Studies in and out of the queue: submit (one job per grid cell), cancel, delete."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from uuid import uuid4

from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction
from studies.db.models import FINISHED_STUDY, Job, JobState, Study, StudyStatus
from studies.exceptions import Conflict, KeyReused, NotFound, SpecError
from studies.queue._common import lock_study, resolve_now, settle_study, state_counts
from studies.queue._types import CancelResult
from studies.spec import DEFAULT_LIMITS, SpecLimits, StudySpec

OptunaNameFn = Callable[[int, str], str]


def default_optuna_study_name(study_id: int, name: str) -> str:
    return f"hdetach-{study_id}-{name}"


def validate_spec(data: Mapping[str, Any], limits: SpecLimits | None = None) -> StudySpec:
    """Validate spec data against `limits` (default: DEFAULT_LIMITS); SpecError if it is invalid."""
    try:
        return StudySpec.model_validate(data, context={"limits": limits or DEFAULT_LIMITS})
    except ValidationError as exc:
        raise SpecError(f"invalid study spec: {exc}", exc.errors(include_url=False)) from exc


def pack_key(spec: StudySpec) -> str:
    """Jobs whose keys are equal share every training setting and can train as one pack."""
    return hashlib.sha256(spec.training_config().model_dump_json().encode()).hexdigest()


class Submission(NamedTuple):
    study_id: int
    replayed: bool  # True: the idempotency key had already submitted this study, nothing was written


def submit_study(
    factory: sessionmaker[Session],
    spec: StudySpec | Mapping[str, Any],
    max_attempts: int = 3,
    optuna_study_name_fn: OptunaNameFn | None = None,
    limits: SpecLimits | None = None,
) -> int:
    """Queue a study and one job per grid cell, all in one transaction; returns the study id.

    A `StudySpec` is valid by construction and stored as it is (`deployment.Backend.submit` made it
    with the deployment's limits); spec data is validated here first, with `limits` or the
    defaults. Either way a bad spec raises before anything is written.
    """
    return submit_study_once(factory, spec, None, max_attempts, optuna_study_name_fn, limits).study_id


def submit_study_once(
    factory: sessionmaker[Session],
    spec: StudySpec | Mapping[str, Any],
    idempotency_key: str | None,
    max_attempts: int = 3,
    optuna_study_name_fn: OptunaNameFn | None = None,
    limits: SpecLimits | None = None,
) -> Submission:
    """`submit_study`, at most once per idempotency key: a key that already submitted this spec
    returns that study (replayed) and writes nothing; with another spec it raises KeyReused.
    Two concurrent submissions with one key both return the one study: the key's unique index
    refuses the second insert, which then finds the first."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    valid = spec if isinstance(spec, StudySpec) else validate_spec(spec, limits)
    cells, key, spec_json = valid.cells(), pack_key(valid), valid.model_dump_json()
    name_fn = optuna_study_name_fn or default_optuna_study_name
    now = resolve_now(None)

    def earlier(session: Session) -> Submission | None:
        if idempotency_key is None:
            return None
        study = session.scalar(select(Study).where(Study.idempotency_key == idempotency_key))
        if study is None:
            return None
        if study.spec_json != spec_json:
            raise KeyReused(
                f"Idempotency-Key {idempotency_key!r} already submitted study {study.id} with another spec;"
                " use a new key for a new study"
            )
        return Submission(study.id, replayed=True)

    def work(session: Session) -> Submission:
        if (found := earlier(session)) is not None:
            return found
        study = Study(
            name=valid.name,
            spec_json=spec_json,
            status=StudyStatus.QUEUED,
            priority=valid.priority,
            cancel_requested=False,
            engine=valid.engine,
            optuna_study_name=f"pending-{uuid4().hex}",  # its real name needs the id
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        session.add(study)
        session.flush()
        study.optuna_study_name = name_fn(study.id, valid.name)
        rows = [
            {
                "study_id": study.id,
                "cell_index": cell.index,
                "variant": cell.variant,
                "p_detach": cell.p_detach,
                "lr": cell.lr,
                "seed": cell.seed,
                "pack_key": key,
                "priority": valid.priority,
                "state": JobState.QUEUED,
                "attempts": 0,
                "max_attempts": max_attempts,
                "created_at": now,
            }
            for cell in cells
        ]
        session.execute(insert(Job), rows)
        session.flush()
        return Submission(study.id, replayed=False)

    try:
        return run_transaction(factory, work)
    except IntegrityError as exc:
        if idempotency_key is not None:  # lost the race to a submission with the same key
            found = run_transaction(factory, earlier)
            if found is not None:
                return found
        raise Conflict(f"study {valid.name!r} clashes with an existing one: {exc.orig}") from exc


def cancel_study(factory: sessionmaker[Session], study_id: int) -> CancelResult:
    """Cancel the queued jobs now; running ones stop when their workers next heartbeat."""
    now = resolve_now(None)

    def work(session: Session) -> CancelResult:
        study = session.get(Study, study_id)
        if study is None:
            raise NotFound(f"no study {study_id}")
        if study.status in FINISHED_STUDY:
            return CancelResult(study_id, StudyStatus(study.status), 0, 0)
        # jobs first, then the study row: the order claim() takes its locks in
        cancelled = session.scalars(
            update(Job)
            .where(Job.study_id == study_id, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELLED, finished_at=now)
            .returning(Job.id)
        ).all()
        study = lock_study(session, study_id)
        if study is None:
            raise NotFound(f"no study {study_id}")
        study.cancel_requested = True
        study.updated_at = now
        settle_study(session, study_id, now)
        running = state_counts(session, study_id)[JobState.RUNNING]
        return CancelResult(study_id, StudyStatus(study.status), len(cancelled), running)

    return run_transaction(factory, work)


def delete_study(factory: sessionmaker[Session], study_id: int) -> str:
    """Delete a study and its jobs; refused (Conflict) while any of its jobs is running.

    Returns its Optuna study's name: the caller deletes that study from Optuna's storage."""

    def work(session: Session) -> str:
        study = lock_study(session, study_id)
        if study is None:
            raise NotFound(f"no study {study_id}")
        running = state_counts(session, study_id)[JobState.RUNNING]
        if running:
            raise Conflict(f"study {study_id} has {running} running jobs: cancel it and let them stop first")
        name = study.optuna_study_name
        session.execute(delete(Study).where(Study.id == study_id))  # jobs: ON DELETE CASCADE
        return name

    return run_transaction(factory, work)

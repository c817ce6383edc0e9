"""A process's handle on its database (our tables and Optuna's), shared by every app layer."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, Self

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.orm import Session, sessionmaker

from deployment.settings import Settings
from studies import queue
from studies.db.engine import make_engine, require_schema, session_factory, upgrade
from studies.spec import StudySpec
from studies.tracking import create_optuna_study, open_storage

SpecData = str | bytes | Mapping[str, Any]  # a study spec as JSON text or as its parsed value


class Database:
    """One engine, its sessions and one Optuna storage per process; the schema is brought to head
    on opening. `pool_pre_ping=False` for executors, whose queue operations retry instead.
    `create=False` (for readers of existing studies) creates and migrates nothing: a missing
    database, or one without our tables at head, raises `NoDatabase`."""

    def __init__(self, database_url: str, pool_pre_ping: bool = True, create: bool = True):
        self.database_url = database_url
        if create:
            upgrade(database_url)
        self.engine = make_engine(database_url, pool_pre_ping=pool_pre_ping)
        if not create:
            try:
                require_schema(database_url, self.engine)
            except BaseException:
                self.engine.dispose()
                raise
        self.factory: sessionmaker[Session] = session_factory(self.engine)

    @cached_property
    def storage(self) -> RDBStorage:
        return open_storage(self.database_url)

    def close(self) -> None:
        self.engine.dispose()
        if "storage" in self.__dict__:
            self.storage.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class Backend(Database):
    """The database as the CLI and the service use it: studies validated against this deployment's
    limits, submitted and deleted in our tables and Optuna's together."""

    def __init__(self, settings: Settings, create: bool = True):
        super().__init__(settings.database_url, create=create)
        self.settings = settings

    def parse_spec(self, data: SpecData) -> StudySpec:
        """Validate a spec (JSON text or its parsed value) against this deployment's limits: the one
        validation a submitted spec gets (raises pydantic's ValidationError)."""
        context = {"limits": self.settings.spec_limits()}
        if isinstance(data, str | bytes):
            return StudySpec.model_validate_json(data, context=context)
        return StudySpec.model_validate(data, context=context)

    def submit(self, data: SpecData) -> int:
        """Validate the spec once with this deployment's limits, queue its jobs (one transaction),
        then register its Optuna study. Takes the spec as data, not a `StudySpec`, so that no spec
        validated without these limits can reach the queue (ValidationError if it is invalid)."""
        return self.submit_once(data, None).study_id

    def submit_once(self, data: SpecData, idempotency_key: str | None) -> queue.Submission:
        """`submit`, at most once per idempotency key (see `queue.submit_study_once`): a key that
        already submitted this spec returns that study, replayed; another spec raises KeyReused."""
        spec = self.parse_spec(data)
        submission = queue.submit_study_once(
            self.factory, spec, idempotency_key, max_attempts=self.settings.max_attempts
        )
        study = queue.get_study(self.factory, submission.study_id)
        # on a replay too: the first request may have stopped between our tables and Optuna's
        create_optuna_study(self.storage, study.optuna_study_name, spec, submission.study_id)
        return submission

    def requeue_failed(self, study_id: int) -> queue.RequeueResult:
        """Queue a study's failed cells again, each with as many more attempts as a freshly
        submitted cell gets (HDETACH_MAX_ATTEMPTS); see `queue.requeue_failed`."""
        return queue.requeue_failed(self.factory, study_id, self.settings.max_attempts)

    def delete_study(self, study_id: int) -> None:
        """Delete a study, its jobs and its Optuna study (the queue refuses while jobs run)."""
        optuna_name = queue.delete_study(self.factory, study_id)
        # after ours: should this fail, the dashboard keeps an orphan, never the reverse
        with contextlib.suppress(KeyError):  # never registered (e.g. submitted without a Backend)
            optuna.delete_study(study_name=optuna_name, storage=self.storage)

"""The queue's tables: studies, their jobs (one per grid cell) and the workers that run them.

Every table is prefixed `hd_` because Optuna keeps its own tables in the same database.
Times are timezone-aware UTC datetimes in Python; `UTCDateTime` normalises what the driver returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class StudyStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


# a study in one of these states no longer changes: none of its jobs is queued or running
FINISHED_STUDY = frozenset({StudyStatus.DONE, StudyStatus.CANCELLED, StudyStatus.FAILED})


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# a job in one of these states is finished with (a requeue may still start it again)
FINISHED_JOB = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


def cells_finished(jobs_by_state: Mapping[str, int]) -> int:
    """How many of a study's jobs, counted by state, are finished."""
    return sum(n for state, n in jobs_by_state.items() if state in FINISHED_JOB)


class ExecutorKind(StrEnum):
    """Who runs a study's jobs: the queue workers, or a Ray Tune driver (`hdetach ray-run`)."""

    QUEUE = "queue"
    RAY = "ray"


class WorkerStatus(StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    HALTED = "halted"  # stopped claiming after repeated infrastructure failures (see `reason`)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """The one place naive datetimes are handled: SQLite hands them back naive, and they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that accepts only aware datetimes and always returns aware UTC ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass timezone-aware UTC times")
        value = value.astimezone(UTC)
        # SQLite stores text: drop the offset so every stored value compares as a plain UTC string.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def _one_of(column: str, enum: type[StrEnum]) -> CheckConstraint:
    allowed = ", ".join(f"'{member.value}'" for member in enum)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class Study(Base):
    __tablename__ = "hd_studies"
    # ids are never reused, even on SQLite after a delete: claims cache what they learn per id
    __table_args__ = (
        _one_of("status", StudyStatus),
        _one_of("engine", ExecutorKind),
        # many NULLs (no key given) are allowed by a unique index on both databases
        Index("ix_hd_studies_idempotency_key", "idempotency_key", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_json: Mapped[str] = mapped_column(Text)  # the validated StudySpec, as JSON
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    engine: Mapped[str] = mapped_column(
        String(16), default=ExecutorKind.QUEUE, server_default=ExecutorKind.QUEUE.value
    )
    optuna_study_name: Mapped[str] = mapped_column(String(255), unique=True)
    # the client's Idempotency-Key of the request that submitted it: a retry finds this study
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class Job(Base):
    """One grid cell of a study; its attempts are serialised through a lease (token + expiry)."""

    __tablename__ = "hd_jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "cell_index", name="uq_hd_jobs_study_cell"),
        Index("ix_hd_jobs_state_priority", "state", "priority"),
        # a claim takes a study's oldest queued jobs: (study_id, state, id) hands them over in order
        Index("ix_hd_jobs_study_state_id", "study_id", "state", "id"),
        _one_of("state", JobState),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("hd_studies.id", ondelete="CASCADE"))
    cell_index: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64))
    p_detach: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    pack_key: Mapped[str] = mapped_column(String(64))  # sha256 of the study's TrainingConfig JSON
    priority: Mapped[int] = mapped_column(Integer, default=0)  # copied from the study
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # incremented at each claim
    # leases that expired (worker killed, node lost): infrastructure, so not counted in `attempts`
    lost_leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(32))  # uuid4 hex, new at every claim
    lease_expires_at: Mapped[datetime | None]
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)  # the current attempt's trial
    result_json: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Worker(Base):
    __tablename__ = "hd_workers"
    __table_args__ = (_one_of("status", WorkerStatus),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # f"{hostname}-{pid}-{uuid4 hex[:6]}"
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    pack_size: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.RUNNING)
    reason: Mapped[str | None] = mapped_column(Text)  # why it halted, or its last infrastructure error

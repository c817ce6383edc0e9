"""The database: typed models of the `hd_` tables, engines and sessions, Alembic migrations."""

from studies.db.engine import (
    alembic_config,
    database_url,
    make_engine,
    normalise_url,
    run_transaction,
    session_factory,
    session_scope,
    upgrade,
)
from studies.db.models import (
    Base,
    ExecutorKind,
    Job,
    JobState,
    Study,
    StudyStatus,
    Worker,
    WorkerStatus,
    as_utc,
    utcnow,
)

__all__ = [
    "Base",
    "ExecutorKind",
    "Job",
    "JobState",
    "Study",
    "StudyStatus",
    "Worker",
    "WorkerStatus",
    "alembic_config",
    "as_utc",
    "database_url",
    "make_engine",
    "normalise_url",
    "run_transaction",
    "session_factory",
    "session_scope",
    "upgrade",
    "utcnow",
]

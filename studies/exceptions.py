"""The errors the core raises; the API layer maps them to HTTP statuses.

    StudiesError
    ├── SpecError    a study spec failed validation (nothing was written)
    │   └── KeyReused    an idempotency key came back with another spec than the one it submitted
    ├── NotFound     no study / job / worker with that id
    ├── Conflict     the request clashes with the current state (e.g. deleting a study with running jobs)
    └── NoDatabase   opened to read, the database is not there or does not hold our tables at head

Late or duplicate reports on a job (`complete_many`, `set_optuna_trials`, `fail`, `release`,
`cancel_job`) are routine under at-least-once delivery: the queue leaves them out of the ids it
returns, or answers False, rather than raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class StudiesError(Exception):
    """Base of every error the core raises on purpose."""


class SpecError(StudiesError, ValueError):
    """A study spec is invalid; `errors` holds pydantic's per-field details."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class NotFound(StudiesError, LookupError):
    """No row with the given id."""


class Conflict(StudiesError):
    """The operation is not allowed in the object's current state."""


class KeyReused(SpecError):
    """An idempotency key that submitted one spec was sent again with another."""


class NoDatabase(StudiesError):
    """A database opened without creating one is missing, lacks our tables or has older ones."""

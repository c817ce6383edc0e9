"""Shared fixtures: every database test runs on SQLite and on PostgreSQL (a fresh database each)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"  # trust auth; CI starts the server
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _fresh_postgres_database() -> tuple[str, str]:
    name = f"hdetach_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def _drop_postgres_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hdetach.db'}"
        return
    name, url = _fresh_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(name)

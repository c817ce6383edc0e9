"""A fresh database per benchmark run: PostgreSQL next to the server URL given, or a new SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from studies.db.engine import make_engine


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new empty PostgreSQL database next to `url`'s (dropped afterwards); SQLite: a new file."""
    if url.startswith("sqlite"):
        path = Path(f"/tmp/hdetach-bench-{uuid.uuid4().hex[:8]}.db")
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    name = f"hdetach_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

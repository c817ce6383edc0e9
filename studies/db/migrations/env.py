"""Alembic environment: `studies.db.upgrade` passes an open connection in `config.attributes`."""

from __future__ import annotations

from typing import Any

from alembic import context

from studies.db.engine import VERSION_TABLE, make_engine
from studies.db.models import Base

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Autogenerate sees only our tables, never Optuna's."""
    return type_ != "table" or (name or "").startswith("hd_")


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "render_as_batch": dialect_name == "sqlite",  # SQLite's ALTER TABLE needs copy-and-move
        "compare_type": True,
    }


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    dialect = (url or "").split(":", 1)[0].split("+", 1)[0]
    context.configure(url=url, literal_binds=True, **_options(dialect))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as fresh:
            context.configure(connection=fresh, **_options(fresh.dialect.name))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

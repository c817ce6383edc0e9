"""Alembic migrations of the `hd_` tables (run them with `studies.db.upgrade(url)`)."""

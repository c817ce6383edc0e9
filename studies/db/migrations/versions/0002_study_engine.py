"""hd_studies.engine: which executor runs a study's jobs (the queue workers or a Ray cluster).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a CHECK constraint to an existing table in place
    with op.batch_alter_table("hd_studies") as batch:
        batch.add_column(sa.Column("engine", sa.String(16), nullable=False, server_default="queue"))
        batch.create_check_constraint("engine_valid", "engine IN ('queue', 'ray')")


def downgrade() -> None:
    with op.batch_alter_table("hd_studies") as batch:
        batch.drop_constraint("engine_valid", type_="check")
        batch.drop_column("engine")

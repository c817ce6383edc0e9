"""hd_studies.idempotency_key: the Idempotency-Key of the request that submitted a study, unique,
so that a retried submission finds the study instead of queueing a second one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a column, then a unique index: SQLite cannot add a column with a UNIQUE constraint
    op.add_column("hd_studies", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.create_index("ix_hd_studies_idempotency_key", "hd_studies", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_hd_studies_idempotency_key", table_name="hd_studies")
    with op.batch_alter_table("hd_studies", recreate="auto") as batch:
        batch.drop_column("idempotency_key")

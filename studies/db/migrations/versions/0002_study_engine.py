"""hd_studies.engine: which executor runs a study's jobs (the queue workers or a Ray cluster);
hd_jobs indexed by (study_id, state, id), so a claim reads a study's oldest queued jobs in order
instead of sorting all of them.

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
    # batch mode: SQLite cannot add a CHECK constraint in place, so the table is rebuilt, this
    # time with AUTOINCREMENT: study ids are never reused after a delete (claims cache per id)
    with op.batch_alter_table(
        "hd_studies", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.add_column(sa.Column("engine", sa.String(16), nullable=False, server_default="queue"))
        batch.create_check_constraint("engine_valid", "engine IN ('queue', 'ray')")
    op.create_index("ix_hd_jobs_study_state_id", "hd_jobs", ["study_id", "state", "id"])
    op.drop_index("ix_hd_jobs_study_state", table_name="hd_jobs")


def downgrade() -> None:
    op.create_index("ix_hd_jobs_study_state", "hd_jobs", ["study_id", "state"])
    op.drop_index("ix_hd_jobs_study_state_id", table_name="hd_jobs")
    with op.batch_alter_table("hd_studies") as batch:
        batch.drop_constraint("engine_valid", type_="check")
        batch.drop_column("engine")

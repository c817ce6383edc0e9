"""Infrastructure failures apart from trial errors: hd_jobs.lost_leases counts the leases that
expired (a killed worker, a lost node), which no longer spend a trial's attempts; a worker may be
'halted' (it stopped claiming after repeated infrastructure failures) and says why in
hd_workers.reason.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("hd_jobs", sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0"))
    # batch mode: SQLite cannot change a CHECK constraint in place, so hd_workers is rebuilt
    with op.batch_alter_table("hd_workers", recreate="auto") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.drop_constraint("status_valid", type_="check")
        batch.create_check_constraint(
            "status_valid", "status IN ('running', 'stopping', 'stopped', 'halted')"
        )


def downgrade() -> None:
    op.execute("UPDATE hd_workers SET status = 'stopped' WHERE status = 'halted'")
    with op.batch_alter_table("hd_workers", recreate="auto") as batch:
        batch.drop_constraint("status_valid", type_="check")
        batch.create_check_constraint("status_valid", "status IN ('running', 'stopping', 'stopped')")
        batch.drop_column("reason")
    op.drop_column("hd_jobs", "lost_leases")

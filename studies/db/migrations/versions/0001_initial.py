"""The queue's tables: hd_studies, hd_jobs, hd_workers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "hd_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("optuna_study_name", sa.String(255), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        _when("finished_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'cancelled', 'failed')",
            name=op.f("ck_hd_studies_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hd_studies")),
        sa.UniqueConstraint("optuna_study_name", name=op.f("uq_hd_studies_optuna_study_name")),
    )
    op.create_table(
        "hd_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("cell_index", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("p_detach", sa.Float(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("pack_key", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        _when("lease_expires_at", nullable=True),
        sa.Column("optuna_trial_id", sa.Integer(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _when("created_at"),
        _when("started_at", nullable=True),
        _when("finished_at", nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_hd_jobs_state_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["hd_studies.id"],
            name=op.f("fk_hd_jobs_study_id_hd_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hd_jobs")),
        sa.UniqueConstraint("study_id", "cell_index", name="uq_hd_jobs_study_cell"),
    )
    op.create_index("ix_hd_jobs_state_priority", "hd_jobs", ["state", "priority"])
    op.create_index("ix_hd_jobs_study_state", "hd_jobs", ["study_id", "state"])
    op.create_table(
        "hd_workers",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("pack_size", sa.Integer(), nullable=False),
        _when("started_at"),
        _when("last_heartbeat"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'stopping', 'stopped')",
            name=op.f("ck_hd_workers_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hd_workers")),
    )


def downgrade() -> None:
    op.drop_table("hd_workers")
    op.drop_index("ix_hd_jobs_study_state", table_name="hd_jobs")
    op.drop_index("ix_hd_jobs_state_priority", table_name="hd_jobs")
    op.drop_table("hd_jobs")
    op.drop_table("hd_studies")

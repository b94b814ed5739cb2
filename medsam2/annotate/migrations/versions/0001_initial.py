"""The initial schema: projects, rounds, cases, interactions.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("axis", sa.String(length=16), nullable=False),
        sa.Column("window", sa.String(length=64), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=1000), nullable=False),
        sa.Column("model_version", sa.String(length=300), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "number"),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("image", sa.String(length=2000), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("hints", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=300), nullable=True),
        sa.Column("preseg_mask", sa.String(length=300), nullable=True),
        sa.Column("preseg_sha256", sa.String(length=64), nullable=True),
        sa.Column("preseg_source", sa.String(length=16), nullable=True),
        sa.Column("mask", sa.String(length=300), nullable=True),
        sa.Column("mask_sha256", sa.String(length=64), nullable=True),
        sa.Column("initial_dice", sa.Float(), nullable=True),
        sa.Column("mask_slices", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires", sa.DateTime(), nullable=True),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("finished_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_index("ix_cases_queue", "cases", ["project_id", "state"])
    op.create_table(
        "interactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("annotator", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("slice_index", sa.Integer(), nullable=True),
        sa.Column("obj_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("mask", sa.LargeBinary(), nullable=True),
        sa.Column("undoes_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"]),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"]),
        sa.ForeignKeyConstraint(["undoes_id"], ["interactions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_interactions_case_id", "interactions", ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_interactions_case_id", "interactions")
    op.drop_table("interactions")
    op.drop_index("ix_cases_queue", "cases")
    op.drop_table("cases")
    op.drop_table("rounds")
    op.drop_table("projects")

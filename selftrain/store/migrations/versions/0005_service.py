"""deployments: the history of which model served, for rollback and post-deploy watching

Revision ID: 0005_service
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "0005_service"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version_id", sa.String(length=64), nullable=True),
        sa.Column("previous_version_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("watch_status", sa.String(length=20), nullable=True),
        sa.Column("watch_report", sa.JSON(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["previous_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("deployments")

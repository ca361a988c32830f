"""indexes for the dashboard: a user's interactions, counts per day, answers per version

With 100,000 interactions, a user's page (WHERE user = ? ORDER BY id DESC), the counts
per day of the last 30 days (WHERE created_at >= ?) and the answers per version
(GROUP BY model_version) each walk an index instead of the whole table.

Revision ID: 0009_dashboard
Revises: 0001
"""
from alembic import op


revision = "0009_dashboard"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_interactions_user_id", "interactions", ["user", "id"])
    op.create_index("ix_interactions_created_at", "interactions", ["created_at"])
    op.create_index("ix_interactions_model_version_id", "interactions", ["model_version", "id"])
    # accepted rides along so the acceptance rate per day is read from the index alone
    op.create_index("ix_feedback_created_at", "feedback", ["created_at", "accepted"])


def downgrade() -> None:
    op.drop_index("ix_feedback_created_at", table_name="feedback")
    op.drop_index("ix_interactions_model_version_id", table_name="interactions")
    op.drop_index("ix_interactions_created_at", table_name="interactions")
    op.drop_index("ix_interactions_user_id", table_name="interactions")

"""tuned_hyperparameters: the best configuration each hyperparameter search found

Optuna's own tables (studies, trials, ...) are created by Optuna itself in the same
database; see selftrain/training/hpo.py.

Revision ID: 0006_training
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "0006_training"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuned_hyperparameters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("study_name", sa.String(length=200), nullable=False),
        sa.Column("sampler", sa.String(length=20), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("dataset_snapshot_id", sa.String(length=64), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("eval_loss", sa.Float(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tuned_hyperparameters_base_model_id", "tuned_hyperparameters", ["base_model", "id"])


def downgrade() -> None:
    op.drop_index("ix_tuned_hyperparameters_base_model_id", table_name="tuned_hyperparameters")
    op.drop_table("tuned_hyperparameters")

"""The database schema: everything the agent saw, was told and became.

One SQLAlchemy 2 declarative model per table. The same schema runs on SQLite (the
default, a file in the workspace) and PostgreSQL; Alembic migrations in
`store/migrations` create and evolve it. JSON columns hold structured results
(metrics, reports, payloads) that no query filters on.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index,
                        Integer, String, Text, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Interaction(Base):
    """One request to the agent and the answer it gave."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    user: Mapped[str] = mapped_column(String(200), default="anonymous")
    source: Mapped[str] = mapped_column(String(20), default="cli")  # cli | api | ingest
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)  # id in an imported file
    kind: Mapped[str] = mapped_column(String(40), default="code_generation")
    category: Mapped[str | None] = mapped_column(String(100))
    prompt: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text, default="")
    explanation: Mapped[str] = mapped_column(Text, default="")
    raw_response: Mapped[str] = mapped_column(Text, default="")
    entry_point: Mapped[str | None] = mapped_column(String(200))
    tests: Mapped[str | None] = mapped_column(Text)  # assert lines that check the answer
    model_version: Mapped[str | None] = mapped_column(String(64))  # None = the base model
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    consumed_by_cycle: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"), index=True)

    feedback: Mapped[list[Feedback]] = relationship(back_populates="interaction",
                                                    order_by="Feedback.id")


class Feedback(Base):
    """What a user said about one answer. Several rows per interaction are allowed;
    the latest non-empty value of each field wins."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating IS NULL OR (rating BETWEEN 1 AND 5)",
                                      name="ck_feedback_rating"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    user: Mapped[str | None] = mapped_column(String(200))
    rating: Mapped[int | None] = mapped_column(Integer)
    accepted: Mapped[bool | None] = mapped_column(Boolean)
    corrected_code: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)

    interaction: Mapped[Interaction] = relationship(back_populates="feedback")


class PreferencePair(Base):
    """A chosen and a rejected answer to the same prompt, for reward models and DPO."""

    __tablename__ = "preference_pairs"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prompt: Mapped[str] = mapped_column(Text)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(40), default="explicit")  # explicit | correction | accept_reject
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    user: Mapped[str | None] = mapped_column(String(200))


class Cycle(Base):
    """One run of the continuous-learning loop; interactions point at the cycle that
    consumed them, set only in the cycle's final commit."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | committed | skipped | failed
    n_interactions: Mapped[int] = mapped_column(Integer, default=0)
    dataset_snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    model_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    report: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class DatasetSnapshot(Base):
    """A curated training set, identified by the hash of its content."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the JSONL
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    path: Mapped[str] = mapped_column(Text)
    n_examples: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)  # counts per stage, drop reasons


class ModelVersion(Base):
    """A trained adapter and everything needed to trust, compare or restore it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one active version, enforced by the database on both backends.
        Index("uq_model_versions_one_active", "is_active", unique=True,
              sqlite_where=text("is_active"), postgresql_where=text("is_active")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # v0001, v0002, ...
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    base_model: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str] = mapped_column(Text)
    file_hashes: Mapped[dict] = mapped_column(JSON, default=dict)  # relative path -> sha256
    dataset_snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    training_config: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    eval_report: Mapped[dict] = mapped_column(JSON, default=dict)
    success: Mapped[bool] = mapped_column(Boolean, default=False)  # passed the gate
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """A unit of work in the persistent priority queue."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(20))  # cycle | sft | rl | eval | hpo
    priority: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class EvaluationRun(Base):
    """One model evaluated on one suite: the aggregate and every item's outcome."""

    __tablename__ = "evaluation_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model_version: Mapped[str | None] = mapped_column(String(64))  # None = the base model
    suite: Mapped[str] = mapped_column(Text)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    n_items: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    items: Mapped[list] = mapped_column(JSON, default=list)


class TrainingMetric(Base):
    """One logged training step of a run (a run is named by its cycle or version)."""

    __tablename__ = "training_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Alert(Base):
    """Something a person should look at: a training anomaly, a rollback."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)

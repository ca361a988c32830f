"""Which model served when: the deployment history the registry writes and the
post-deploy watch reads.

One row per change of the serving model (an activation, a rollback, a return to the base
model). `model_versions.is_active` says what serves now; this table says what served
before it, which is what an automatic rollback must restore and what the watch compares
the new version against.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from selftrain.store.schema import Base, utcnow


class Deployment(Base):
    """The serving model changed to `version_id` (None = the base model)."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(String(20))  # cycle | manual | rollback | auto_rollback
    # watching → kept | rolled_back | superseded; None: not watched (rollbacks, the base model)
    watch_status: Mapped[str | None] = mapped_column(String(20))
    watch_report: Mapped[dict | None] = mapped_column(JSON)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

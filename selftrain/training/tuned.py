"""The best training hyperparameters a search found, stored for the next cycle to use.

One row per finished search (`selftrain hpo run`): the study, the base model and the
dataset snapshot it searched on, the best parameters and their eval loss. The next
cycle trains with the newest row for its base model (`latest_tuned`, `apply_tuned`);
older rows stay as the history of searches.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from selftrain.store.schema import Base, utcnow

TUNED_FIELDS = ("learning_rate", "batch_size", "epochs", "weight_decay", "warmup_steps")


class TunedHyperparameters(Base):
    """The best configuration one hyperparameter search found."""

    __tablename__ = "tuned_hyperparameters"
    __table_args__ = (Index("ix_tuned_hyperparameters_base_model_id", "base_model", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    study_name: Mapped[str] = mapped_column(String(200))
    sampler: Mapped[str] = mapped_column(String(20))  # tpe | grid
    base_model: Mapped[str] = mapped_column(Text)
    dataset_snapshot_id: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)  # the TUNED_FIELDS and their values
    eval_loss: Mapped[float] = mapped_column(Float)  # best eval loss, on the snapshot's eval split
    n_trials: Mapped[int] = mapped_column(Integer)  # finished trials in the study when stored


def store_tuned(session: Session, *, study_name: str, sampler: str, base_model: str,
                dataset_snapshot_id: str | None, params: dict, eval_loss: float,
                n_trials: int) -> TunedHyperparameters:
    row = TunedHyperparameters(study_name=study_name, sampler=sampler, base_model=base_model,
                               dataset_snapshot_id=dataset_snapshot_id,
                               params={k: params[k] for k in TUNED_FIELDS if k in params},
                               eval_loss=eval_loss, n_trials=n_trials)
    session.add(row)
    session.flush()
    return row


def latest_tuned(session: Session, base_model: str) -> TunedHyperparameters | None:
    """The newest stored search result for `base_model`, if any."""
    return session.scalar(select(TunedHyperparameters)
                          .where(TunedHyperparameters.base_model == base_model)
                          .order_by(TunedHyperparameters.id.desc()).limit(1))


def apply_tuned(config, tuned: TunedHyperparameters | None):
    """`config` (an SFTConfig) with the tuned values in place of its own."""
    if tuned is None:
        return config
    return replace(config, **{k: v for k, v in tuned.params.items() if k in TUNED_FIELDS})

"""Writing and reading interactions and feedback: the store's side of the loop."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from selftrain.errors import SelftrainError
from selftrain.store.schema import Feedback, Interaction, PreferencePair


def record_interaction(session: Session, **fields) -> Interaction:
    """Store one request and its answer; flushed so the caller can read its id."""
    interaction = Interaction(**fields)
    session.add(interaction)
    session.flush()
    return interaction


def record_feedback(session: Session, interaction_id: int, *, rating: int | None = None,
                    accepted: bool | None = None, corrected_code: str | None = None,
                    comment: str | None = None, user: str | None = None, flush: bool = True) -> Feedback:
    """Attach feedback to an interaction. A correction also becomes a preference pair
    (the user's code preferred over the model's), which reward models learn from.
    flush=False leaves the INSERT to the caller's next flush (the API's group writer sends a
    whole group's feedback in one statement); the feedback's id is known only after it."""
    if rating is not None and not 1 <= rating <= 5:
        raise SelftrainError(f"A rating must be an integer from 1 to 5, got {rating}.")
    if rating is None and accepted is None and not corrected_code and not comment:
        raise SelftrainError("Feedback needs at least one of: a rating, accept/reject, "
                             "corrected code or a comment.")
    interaction = session.get(Interaction, interaction_id)
    if interaction is None:
        raise SelftrainError(f"There is no interaction with id {interaction_id}.")
    feedback = Feedback(interaction_id=interaction_id, rating=rating, accepted=accepted,
                        corrected_code=corrected_code or None, comment=comment or None, user=user)
    session.add(feedback)
    if corrected_code and corrected_code.strip() != interaction.code.strip():
        session.add(PreferencePair(prompt=interaction.prompt, chosen=corrected_code,
                                   rejected=interaction.code, source="correction",
                                   interaction_id=interaction_id, user=user))
    if flush:
        session.flush()
    return feedback


@dataclass(frozen=True)
class FeedbackSummary:
    """The latest word on each feedback field of one interaction."""

    rating: int | None = None
    accepted: bool | None = None
    corrected_code: str | None = None
    comment: str | None = None


def summarize_feedback(rows: list[Feedback]) -> FeedbackSummary:
    summary: dict = {}
    for row in rows:  # oldest first; later values overwrite earlier ones
        for name in ("rating", "accepted", "corrected_code", "comment"):
            value = getattr(row, name)
            if value is not None:
                summary[name] = value
    return FeedbackSummary(**summary)


def unconsumed_interactions(session: Session, up_to_id: int | None = None) -> list[Interaction]:
    """Interactions no committed cycle has learned from yet, with their feedback loaded."""
    query = (select(Interaction).where(Interaction.consumed_by_cycle.is_(None))
             .options(selectinload(Interaction.feedback)).order_by(Interaction.id))
    if up_to_id is not None:
        query = query.where(Interaction.id <= up_to_id)
    return list(session.scalars(query))


def count_unconsumed(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Interaction)
                          .where(Interaction.consumed_by_cycle.is_(None))) or 0


def preference_pairs(session: Session) -> list[tuple[str, str, str]]:
    """Every stored (prompt, chosen, rejected) pair: explicit ones and those feedback made."""
    return [(p.prompt, p.chosen, p.rejected) for p in session.scalars(select(PreferencePair).order_by(PreferencePair.id))]


def recent_tasks(session: Session, most: int = 2000) -> list[dict]:
    """{prompt, tests} of the distinct prompts among the latest `most` interactions, newest
    first: what RL samples answers to (tests, where stored, feed the execution reward)."""
    seen: dict[str, dict] = {}
    for i in session.scalars(select(Interaction).order_by(Interaction.id.desc()).limit(most)):
        if i.prompt.strip() and i.prompt not in seen:
            seen[i.prompt] = {"prompt": i.prompt, "tests": i.tests or ""}
    return list(seen.values())

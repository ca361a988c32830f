"""The server's side of the store: interactions as the API writes and shows them.

Writers take a session: the routes run them on the group-commit writer (`writer.py`).

Visibility is one rule, applied everywhere: an admin sees every interaction, a user
only those stored under their name; anything else is reported as not found (404), so
ids of other users' interactions reveal nothing.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import selectinload

from selftrain.models.prompting import split_answer
from selftrain.serve.engine import Completion
from selftrain.serve.keys import Principal
from selftrain.serve.problems import ApiError
from selftrain.serve.schemas import FeedbackSummaryOut, InteractionOut
from selftrain.store.records import record_interaction, summarize_feedback
from selftrain.store.schema import Interaction


def answer_fields(completion: Completion) -> dict:
    code, explanation = split_answer(completion.text)
    return dict(code=code, explanation=explanation, raw_response=completion.text,
                model_version=completion.model_version, latency_ms=round(completion.latency_ms, 3),
                prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)


def store_answers(session, principal: Principal, items: list[tuple[str, Completion]], *,
                  tests: str | None = None, entry_point: str | None = None, kind: str | None = None) -> list[int]:
    """Store (prompt, completion) pairs; their ids (flushed, committed by the caller)."""
    extra = {"kind": kind} if kind else {}
    rows = [record_interaction(session, user=principal.name, source="api", prompt=prompt,
                               tests=tests, entry_point=entry_point, **extra, **answer_fields(c))
            for prompt, c in items]
    return [r.id for r in rows]


def store_placeholder(session, principal: Principal, prompt: str, version_id: str | None) -> int:
    """A streamed answer's row, created before the first token so its id can go out in
    the headers; `complete_placeholder` fills it in before the stream ends."""
    return record_interaction(session, user=principal.name, source="api", prompt=prompt,
                              model_version=version_id).id


def complete_placeholder(session, interaction_id: int, completion: Completion) -> None:
    session.execute(update(Interaction).where(Interaction.id == interaction_id)
                    .values(**answer_fields(completion)))


def drop_placeholder(session, interaction_id: int) -> None:
    """The stream broke off before its end: the client never got the whole answer."""
    session.execute(delete(Interaction).where(Interaction.id == interaction_id))


def visible(session, principal: Principal, interaction_id: int) -> Interaction:
    row = session.get(Interaction, interaction_id)
    if row is None or (not principal.is_admin and row.user != principal.name):
        raise ApiError(404, f"There is no interaction with id {interaction_id}.", param="interaction_id")
    return row


def to_out(row: Interaction) -> InteractionOut:
    summary = summarize_feedback(row.feedback)
    return InteractionOut(id=row.id, created_at=row.created_at, user=row.user, source=row.source,
                          prompt=row.prompt, code=row.code, explanation=row.explanation, tests=row.tests,
                          model_version=row.model_version, prompt_tokens=row.prompt_tokens,
                          completion_tokens=row.completion_tokens, latency_ms=row.latency_ms,
                          feedback=FeedbackSummaryOut(**summary.__dict__))


def page(session, principal: Principal, *, limit: int, before: int | None, user: str | None):
    query = select(Interaction).options(selectinload(Interaction.feedback)).order_by(Interaction.id.desc())
    if not principal.is_admin:
        query = query.where(Interaction.user == principal.name)
    elif user is not None:
        query = query.where(Interaction.user == user)
    if before is not None:
        query = query.where(Interaction.id < before)
    rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [to_out(r) for r in rows], (rows[-1].id if more else None)

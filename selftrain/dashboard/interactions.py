"""The interactions pages: a searchable list in pages, one interaction in full, and
feedback given from the page.

Visibility is the API's rule (`serve/interactions.visible`): an admin sees everyone's,
a user only their own, and another user's id is simply "not found". Pages are keyset
pages (`?before=ID` / `?after=ID`), not OFFSET ones: each costs an index walk of one
page's length wherever it is in 100,000 rows. Feedback goes through the same
group-commit writer and `record_feedback` as the API, so it counts exactly like feedback
sent there.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import load_only, selectinload

from selftrain.dashboard.web import (Form, PageError, Viewer, page_number, page_router, redirect, render, row_id,
                                     signed_form, viewer)
from selftrain.errors import SelftrainError
from selftrain.serve.interactions import visible
from selftrain.serve.problems import ApiError
from selftrain.store.records import record_feedback, summarize_feedback
from selftrain.store.schema import Feedback, Interaction, ModelVersion

router = page_router()
PAGE_SIZES = (25, 50, 100)
FEEDBACK_FILTERS = {
    "": ("any feedback state", None),
    "some": ("with feedback", exists().where(Feedback.interaction_id == Interaction.id)),
    "none": ("without feedback", ~exists().where(Feedback.interaction_id == Interaction.id)),
    "accepted": ("accepted", exists().where(Feedback.interaction_id == Interaction.id, Feedback.accepted.is_(True))),
    "rejected": ("rejected", exists().where(Feedback.interaction_id == Interaction.id, Feedback.accepted.is_(False))),
    "corrected": ("corrected", exists().where(Feedback.interaction_id == Interaction.id,
                                              Feedback.corrected_code.is_not(None))),
}


def _like(session, column, text: str):
    """Substring match, case-insensitive on both backends (SQLite's LIKE already is, for
    ASCII; PostgreSQL needs ILIKE). `%`, `_` and `\\` in the text match themselves."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if session.get_bind().dialect.name == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern, escape="\\")


def filters(request: Request, who: Viewer) -> dict:
    """The list's query parameters, checked: one sentence for the first bad one."""
    params = request.query_params
    q = params.get("q", "").strip()
    if len(q) > 200 or "\x00" in q:
        raise PageError(422, "The search text must be at most 200 characters, without NUL.")
    feedback = params.get("feedback", "")
    if feedback not in FEEDBACK_FILTERS:
        raise PageError(422, f"'feedback' must be one of: {', '.join(k for k in FEEDBACK_FILTERS if k)}.")
    size = page_number(params.get("size"), "size", low=1, high=max(PAGE_SIZES)) or PAGE_SIZES[0]
    version = params.get("version", "").strip()[:64]
    user = params.get("user", "").strip()[:200] if who.is_admin else ""
    return dict(q=q, feedback=feedback, size=size, version=version, user=user,
                before=page_number(params.get("before"), "before"), after=page_number(params.get("after"), "after"))


def search(session, who: Viewer, *, q: str, feedback: str, size: int, version: str, user: str,
           before: int | None, after: int | None) -> tuple[list[Interaction], int | None, int | None]:
    """One page, newest first: (rows, id for the newer page's ?after=, id for the older page's ?before=)."""
    query = select(Interaction).options(
        load_only(Interaction.id, Interaction.created_at, Interaction.user, Interaction.source,
                  Interaction.prompt, Interaction.model_version, Interaction.consumed_by_cycle),
        selectinload(Interaction.feedback))
    if not who.is_admin:
        query = query.where(Interaction.user == who.name)
    elif user:
        query = query.where(Interaction.user == user)
    if version == "base":
        query = query.where(Interaction.model_version.is_(None))
    elif version:
        query = query.where(Interaction.model_version == version)
    if FEEDBACK_FILTERS[feedback][1] is not None:
        query = query.where(FEEDBACK_FILTERS[feedback][1])
    if q:
        number = q.removeprefix("#")
        matches = [_like(session, Interaction.prompt, q), _like(session, Interaction.code, q)]
        if number.isdecimal() and len(number) < 11 and int(number) < 2**31:
            matches.append(Interaction.id == int(number))
        query = query.where(or_(*matches))
    if after is not None:  # the newer page: walk up from `after`, then show newest first
        rows = list(session.scalars(query.where(Interaction.id > after).order_by(Interaction.id).limit(size + 1)))
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        return rows, (rows[0].id if rows and more_newer else None), (rows[-1].id if rows else None)
    if before is not None:
        query = query.where(Interaction.id < before)
    rows = list(session.scalars(query.order_by(Interaction.id.desc()).limit(size + 1)))
    more_older = len(rows) > size
    rows = rows[:size]
    return rows, (rows[0].id if rows and before is not None else None), (rows[-1].id if rows and more_older else None)


def list_page(request: Request, who: Viewer) -> dict:
    chosen = filters(request, who)
    with request.app.state.db.session() as session:
        rows, newer, older = search(session, who, **chosen)
        unfiltered = not any(chosen[k] for k in ("q", "feedback", "version", "user", "before", "after"))
        total = session.scalar(select(func.count()).select_from(Interaction).where(
            *([] if who.is_admin else [Interaction.user == who.name]))) if unfiltered else None
        items = [dict(row=r, summary=summarize_feedback(r.feedback), n_feedback=len(r.feedback)) for r in rows]
    keep = {k: v for k, v in chosen.items() if v and k in ("q", "feedback", "version", "user")}
    if chosen["size"] != PAGE_SIZES[0]:
        keep["size"] = chosen["size"]
    return dict(items=items, newer=newer, older=older, total=total, chosen=chosen, keep=keep,
                feedback_filters={k: v[0] for k, v in FEEDBACK_FILTERS.items()}, page_sizes=PAGE_SIZES)


@router.get("/interactions")
async def interactions(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "interactions.html", nav="interactions", **await run_in_threadpool(list_page, request, who))


def detail(request: Request, who: Viewer, interaction_id: int) -> dict:
    row_id(interaction_id, "interaction")
    with request.app.state.db.session() as session:
        try:
            row = visible(session, who.principal, interaction_id)
        except ApiError as exc:
            raise PageError(exc.status, exc.message) from None
        history = list(row.feedback)
        version = session.get(ModelVersion, row.model_version) if row.model_version else None
        return dict(row=row, history=history, summary=summarize_feedback(history), version=version)


@router.get("/interactions/{interaction_id:int}")
async def interaction(request: Request, interaction_id: int, who: Viewer = Depends(viewer)):
    return render(request, "interaction.html", nav="interactions",
                  **await run_in_threadpool(detail, request, who, interaction_id), form={})


def feedback_fields(form: Form) -> dict:
    """The form's fields as record_feedback takes them, or a PageError naming the bad one."""
    rating = form.get("rating").strip()
    if rating and rating not in ("1", "2", "3", "4", "5"):
        raise PageError(422, f"The rating must be a whole number from 1 to 5, got {rating[:20]!r}.")
    accepted = form.get("accepted")
    if accepted not in ("", "yes", "no"):
        raise PageError(422, "'accepted' must be yes, no or left empty.")
    code, comment = form.get("corrected_code"), form.get("comment").strip()
    if "\x00" in code or "\x00" in comment:
        raise PageError(422, "The corrected code and the comment must not contain NUL characters.")
    if not (rating or accepted or code.strip() or comment):
        raise PageError(422, "Feedback needs at least one of: a rating, accept or reject, corrected code "
                        "or a comment.")
    return dict(rating=int(rating) if rating else None, accepted={"yes": True, "no": False}.get(accepted),
                corrected_code=code if code.strip() else None, comment=comment or None)


@router.post("/interactions/{interaction_id:int}/feedback")
async def give_feedback(request: Request, interaction_id: int, form: Form = Depends(signed_form)):
    who = form.viewer
    row_id(interaction_id, "interaction")
    try:
        fields = feedback_fields(form)

        def write(session) -> None:
            row = visible(session, who.principal, interaction_id)
            try:
                record_feedback(session, row.id, user=who.name, **fields)
            except SelftrainError as exc:  # raised before it adds anything
                raise PageError(422, str(exc)) from None

        await request.app.state.writer.run(write, interaction_id=interaction_id)
    except ApiError as exc:
        raise PageError(exc.status, exc.message) from None
    except PageError as exc:  # show the page again, with the error and what was typed
        if exc.status == 404:
            raise
        context = await run_in_threadpool(detail, request, who, interaction_id)
        return render(request, "interaction.html", status=exc.status, nav="interactions", error=exc.message,
                      form=form.fields, **context)
    return redirect(f"/interactions/{interaction_id}?done=feedback#feedback")

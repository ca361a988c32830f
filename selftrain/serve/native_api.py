"""The native routes: generate with tests, feedback, preferences, one's own history.

Users see, rate and pair only their own interactions; admins see everyone's.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from selftrain.errors import SelftrainError
from selftrain.models.prompting import split_answer
from selftrain.serve.auth import current_principal
from selftrain.serve.interactions import page, store_answers, to_out, visible
from selftrain.serve.keys import Principal
from selftrain.serve.openai_api import INTERACTION_HEADER, prepare, submit, wait
from selftrain.serve.problems import BUSY, INVALID, NOT_FOUND, UNAUTHORIZED, ApiError
from selftrain.serve.schemas import (MAX_ID, FeedbackRequest, FeedbackResponse, GenerateRequest,
                                     GenerateResponse, InteractionOut, InteractionPage, PreferenceRequest,
                                     PreferenceResponse)
from selftrain.serve.writer import AfterFlush
from selftrain.store.records import record_feedback
from selftrain.store.schema import PreferencePair

router = APIRouter(prefix="/api", tags=["native"], responses={**UNAUTHORIZED, **INVALID})

InteractionId = Path(ge=1, le=MAX_ID, description="The id a generation returned.")


@router.post("/generate", response_model=GenerateResponse, responses=BUSY,
             summary="Ask for code; the answer is stored with its tests")
async def generate(body: GenerateRequest, request: Request, response: Response,
                   principal: Principal = Depends(current_principal)):
    engine = request.app.state.engine
    ids, max_tokens = prepare(request, engine.render_instruction(body.prompt), body.max_tokens, "prompt")
    completion = await wait(submit(request, ids, max_tokens, ()))
    [interaction_id] = await request.app.state.writer.run(partial(
        store_answers, principal=principal, items=[(body.prompt, completion)], tests=body.tests,
        entry_point=body.entry_point))
    response.headers[INTERACTION_HEADER] = str(interaction_id)
    code, explanation = split_answer(completion.text)
    return GenerateResponse(interaction_id=interaction_id, code=code, explanation=explanation,
                            model_version=completion.model_version, finish_reason=completion.finish_reason,
                            prompt_tokens=completion.prompt_tokens,
                            completion_tokens=completion.completion_tokens,
                            latency_ms=round(completion.latency_ms, 3))


@router.post("/interactions/{interaction_id}/feedback", response_model=FeedbackResponse,
             status_code=201, responses=NOT_FOUND, summary="Rate, accept/reject or correct an answer")
async def feedback(body: FeedbackRequest, request: Request, interaction_id: int = InteractionId,
                   principal: Principal = Depends(current_principal)):
    def write(session) -> FeedbackResponse:
        row = visible(session, principal, interaction_id)  # held: record_feedback finds it in the session
        try:
            feedback = record_feedback(session, row.id, rating=body.rating, accepted=body.accepted,
                                       corrected_code=body.corrected_code, comment=body.comment,
                                       user=principal.name, flush=False)
        except SelftrainError as exc:  # raised before it adds anything
            raise ApiError(422, str(exc)) from None
        return AfterFlush(lambda: FeedbackResponse(feedback_id=feedback.id, interaction_id=interaction_id))

    return await request.app.state.writer.run(write, interaction_id=interaction_id)


@router.post("/preferences", response_model=PreferenceResponse, status_code=201, responses=NOT_FOUND,
             summary="Say which of two answers to a prompt is better")
async def preference(body: PreferenceRequest, request: Request,
                     principal: Principal = Depends(current_principal)):
    def write(session) -> PreferenceResponse:
        if body.interaction_id is not None:
            visible(session, principal, body.interaction_id)
        pair = PreferencePair(prompt=body.prompt, chosen=body.chosen, rejected=body.rejected,
                              source="explicit", interaction_id=body.interaction_id, user=principal.name)
        session.add(pair)
        session.flush()
        return PreferenceResponse(id=pair.id)

    return await request.app.state.writer.run(write)


@router.get("/interactions", response_model=InteractionPage, summary="Interactions, newest first")
def interactions(request: Request, principal: Principal = Depends(current_principal),
                 limit: int = Query(20, ge=1, le=200, description="Page size."),
                 before: int | None = Query(None, ge=1, le=MAX_ID, description="Only ids below this "
                                            "(the previous page's `next_before`)."),
                 user: str | None = Query(None, max_length=200, pattern=r"^[^\x00]*$",
                                          description="Admins: only this user's. "
                                          "Ignored for user keys, which see only their own.")):
    with request.app.state.db.session() as session:
        items, next_before = page(session, principal, limit=limit, before=before, user=user)
    return InteractionPage(items=items, next_before=next_before)


@router.get("/interactions/{interaction_id}", response_model=InteractionOut, responses=NOT_FOUND,
            summary="One interaction with its latest feedback")
def interaction(request: Request, interaction_id: int = InteractionId,
                principal: Principal = Depends(current_principal)):
    with request.app.state.db.session() as session:
        return to_out(visible(session, principal, interaction_id))

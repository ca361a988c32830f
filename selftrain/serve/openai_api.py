"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Each answer is an interaction stored under the key's owner, committed before the
response goes out; its id is in the response id (`chatcmpl-<id>`, `cmpl-<id>`) and in
the `X-Selftrain-Interaction` header, so the client can send feedback to
/api/interactions/<id>/feedback. A streamed answer's row is created when the stream
starts (so the id can be sent first), completed before the final event, and deleted if
the client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from selftrain.serve.auth import current_principal
from selftrain.serve.engine import Completion, EngineBusy, EngineStopped, Ticket, flatten_messages
from selftrain.serve.interactions import (complete_placeholder, drop_placeholder, store_answers,
                                          store_placeholder)
from selftrain.serve.keys import Principal
from selftrain.serve.problems import BUSY, INVALID, UNAUTHORIZED, ApiError
from selftrain.serve.schemas import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk,
                                     ChatCompletionRequest, ChunkChoice, ChunkDelta, CompletionChoice,
                                     CompletionRequest, ModelCard, ModelList, TextCompletion, Usage,
                                     stop_strings)

MODEL_NAME = "selftrain"
INTERACTION_HEADER = "X-Selftrain-Interaction"
_HEADER_DOC = {INTERACTION_HEADER: {"description": "Id(s) of the stored interaction(s), comma-separated.",
                                    "schema": {"type": "string"}}}

router = APIRouter(prefix="/v1", tags=["openai"], responses={**UNAUTHORIZED, **INVALID})


def _stream_doc(model) -> dict:
    """The 200 response of a route that can stream: JSON, or (OpenAPI 3.1 style, the
    schema describing each event) server-sent events whose data is a `model` as JSON."""
    event = {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"}, "id": {"type": "string"},
        "data": {"description": f"A {model.__name__} as JSON; `[DONE]` ends the stream; an "
                 "ErrorResponse as JSON if generation failed midway.", "anyOf": [
                     {"type": "string", "const": "[DONE]"},
                     *({"type": "string", "contentMediaType": "application/json",
                        "contentSchema": {"$ref": f"#/components/schemas/{name}"}}
                       for name in (model.__name__, "ErrorResponse"))]}}}
    return {200: {"description": "The answer; with `stream: true`, server-sent events.",
                  "headers": _HEADER_DOC, "content": {"text/event-stream": {"schema": event}}}}


# --- shared by both generation routes ---
def prepare(request: Request, prompt_text: str, max_tokens: int | None, field: str) -> tuple[list[int], int]:
    """Token ids of the prompt and the max_tokens to use, or a 422 naming the field."""
    engine = request.app.state.engine
    ids = engine.encode(prompt_text)
    if not ids:
        raise ApiError(422, f"Field '{field}': the prompt is empty.", param=field)
    if len(ids) > engine.max_prompt_tokens:
        raise ApiError(422, f"Field '{field}': the prompt is {len(ids)} tokens; the limit is "
                       f"{engine.max_prompt_tokens}.", param=field, code="context_length_exceeded")
    limit = min(engine.max_tokens_limit, engine.context_length - len(ids))
    wanted = max_tokens or min(engine.default_max_tokens, limit)
    if wanted > limit:
        raise ApiError(422, f"Field 'max_tokens': at most {limit} tokens can be generated for this "
                       f"prompt, got {wanted}.", param="max_tokens")
    return ids, max(1, wanted)


def submit(request: Request, ids: list[int], max_tokens: int, stop: tuple[str, ...], on_text=None) -> Ticket:
    try:
        return request.app.state.engine.submit(ids, max_tokens, stop, on_text)
    except EngineBusy as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": "1"}) from None
    except EngineStopped as exc:
        raise ApiError(503, str(exc)) from None


async def wait(ticket: Ticket) -> Completion:
    try:
        return await asyncio.wrap_future(ticket.future)
    except asyncio.CancelledError:
        ticket.cancel()
        raise
    except EngineStopped as exc:
        raise ApiError(503, str(exc)) from None


def _sse(obj) -> str:
    return "data: " + (obj if isinstance(obj, str) else obj.model_dump_json(exclude_none=True)) + "\n\n"


async def _stream(request: Request, principal: Principal, prompt: str, ids: list[int], max_tokens: int,
                  stop: tuple[str, ...], make_chunk, usage_too: bool):
    """Start a streamed generation; returns (interaction id, the SSE body iterator)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    ticket = submit(request, ids, max_tokens, stop, lambda s: loop.call_soon_threadsafe(pieces.put_nowait, s))
    ticket.future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    writer, engine = request.app.state.writer, request.app.state.engine
    try:
        interaction_id = await writer.run(partial(store_placeholder, principal=principal, prompt=prompt,
                                                  version_id=engine.version_id))
    except BaseException:
        ticket.cancel()
        raise

    async def events():
        done = False
        try:
            yield _sse(make_chunk(interaction_id, ChunkDelta(role="assistant", content=""), None, None))
            while (piece := await pieces.get()) is not None:
                yield _sse(make_chunk(interaction_id, ChunkDelta(content=piece), None, None))
            try:
                completion = ticket.future.result()
            except Exception as exc:  # the batch failed: say so in the stream, keep no row
                yield _sse(json.dumps({"error": {"message": f"Generation failed: {exc}",
                                                 "type": "server_error", "param": None, "code": None}}))
                return
            await writer.run(partial(complete_placeholder, interaction_id=interaction_id, completion=completion))
            done = True
            usage = _usage(completion.prompt_tokens, completion.completion_tokens)
            yield _sse(make_chunk(interaction_id, ChunkDelta(), completion.finish_reason, None,
                                  version=completion.model_version))
            if usage_too:
                yield _sse(make_chunk(interaction_id, None, None, usage, version=completion.model_version))
            yield _sse("[DONE]")
        finally:
            if not done:
                ticket.cancel()
                with anyio.CancelScope(shield=True):
                    await writer.run(partial(drop_placeholder, interaction_id=interaction_id))

    return interaction_id, events()


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _fingerprint(version: str | None) -> str:
    return version or "base"


# --- routes ---
@router.post("/chat/completions", response_model=ChatCompletion, responses={**BUSY, **_stream_doc(ChatCompletionChunk)},
             summary="Answer a conversation (OpenAI chat completions)")
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response,
                           principal: Principal = Depends(current_principal)):
    engine = request.app.state.engine
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    try:
        rendered = engine.render_chat(messages)
    except Exception as exc:  # e.g. a chat template that insists on alternating roles
        raise ApiError(422, f"Field 'messages': the model's chat template cannot lay them out ({exc}).",
                       param="messages") from None
    ids, max_tokens = prepare(request, rendered, body.max_completion_tokens or body.max_tokens, "messages")
    prompt, stop, created = flatten_messages(messages), stop_strings(body.stop), int(time.time())

    if body.stream:
        def chunk(interaction_id, delta, finish, usage, version=engine.version_id):
            return ChatCompletionChunk(
                id=f"chatcmpl-{interaction_id}", created=created, model=MODEL_NAME,
                system_fingerprint=_fingerprint(version), usage=usage,
                choices=[] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)])

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        interaction_id, events = await _stream(request, principal, prompt, ids, max_tokens, stop, chunk, include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={INTERACTION_HEADER: str(interaction_id), "Cache-Control": "no-cache"})

    completion = await wait(submit(request, ids, max_tokens, stop))
    [interaction_id] = await request.app.state.writer.run(
        partial(store_answers, principal=principal, items=[(prompt, completion)]))
    response.headers[INTERACTION_HEADER] = str(interaction_id)
    return ChatCompletion(
        id=f"chatcmpl-{interaction_id}", created=created, model=MODEL_NAME,
        system_fingerprint=_fingerprint(completion.model_version),
        choices=[ChatChoice(index=0, message=AssistantMessage(content=completion.text),
                            finish_reason=completion.finish_reason)],
        usage=_usage(completion.prompt_tokens, completion.completion_tokens))


@router.post("/completions", response_model=TextCompletion, responses={**BUSY, **_stream_doc(TextCompletion)},
             summary="Continue text as is (OpenAI completions)")
async def completions(body: CompletionRequest, request: Request, response: Response,
                      principal: Principal = Depends(current_principal)):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    prepared = [prepare(request, p, body.max_tokens, "prompt" if len(prompts) == 1 else f"prompt.{i}")
                for i, p in enumerate(prompts)]
    stop, created = stop_strings(body.stop), int(time.time())
    engine = request.app.state.engine

    if body.stream:
        def chunk(interaction_id, delta, finish, usage, version=engine.version_id):
            text = (delta.content or "") if delta is not None else ""
            if delta is not None and delta.role and body.echo:
                text = prompts[0]
            return TextCompletion(
                id=f"cmpl-{interaction_id}", created=created, model=MODEL_NAME,
                system_fingerprint=_fingerprint(version), usage=usage,
                choices=[] if delta is None else [CompletionChoice(index=0, text=text, finish_reason=finish,
                                                                   interaction_id=interaction_id)])

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        ids, max_tokens = prepared[0]
        interaction_id, events = await _stream(request, principal, prompts[0], ids, max_tokens, stop, chunk,
                                               include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={INTERACTION_HEADER: str(interaction_id), "Cache-Control": "no-cache"})

    tickets = []
    try:
        for ids, max_tokens in prepared:
            tickets.append(submit(request, ids, max_tokens, stop))
        results = await asyncio.gather(*(wait(t) for t in tickets))
    except BaseException:
        for t in tickets:
            t.cancel()
        raise
    interaction_ids = await request.app.state.writer.run(
        partial(store_answers, principal=principal, items=list(zip(prompts, results)), kind="completion"))
    response.headers[INTERACTION_HEADER] = ",".join(map(str, interaction_ids))
    return TextCompletion(
        id=f"cmpl-{interaction_ids[0]}", created=created, model=MODEL_NAME,
        system_fingerprint=_fingerprint(results[0].model_version),
        choices=[CompletionChoice(index=i, text=(p if body.echo else "") + c.text, finish_reason=c.finish_reason,
                                  interaction_id=iid)
                 for i, (p, c, iid) in enumerate(zip(prompts, results, interaction_ids))],
        usage=_usage(sum(c.prompt_tokens for c in results), sum(c.completion_tokens for c in results)))


@router.get("/models", response_model=ModelList, summary="The one model served (the active version)")
async def models(request: Request, principal: Principal = Depends(current_principal)):
    return ModelList(data=[ModelCard(id=MODEL_NAME, created=request.app.state.started, owned_by="selftrain")])

"""Request and response bodies of the API, declared so /openapi.json is exact.

The OpenAI-compatible models follow the OpenAI API reference for the fields selftrain
honours; fields a client may send that we do not use are ignored (pydantic's default),
so off-the-shelf clients keep working. Decoding is greedy: `temperature`, `top_p` and
`seed` are accepted and have no effect.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL


def _no_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refuse it on every backend alike
        raise ValueError("must not contain NUL characters")
    return value


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (stored in UTC); RFC 3339 wants an offset.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


Timestamp = Annotated[datetime, AfterValidator(_utc)]
Text = Annotated[str, AfterValidator(_no_nul)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]
Stop = Annotated[Text | list[Text] | None, Field(
    None, description="Up to 4 strings; generation stops before the first one produced.")]


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class RequestModel(BaseModel):
    """A request body: strict types (no "1" for 1, no false for 0), so what the schema
    says is invalid is refused, not guessed at."""

    model_config = ConfigDict(strict=True)


class _StopChecked(RequestModel):
    @model_validator(mode="after")
    def _at_most_four_stops(self):
        if isinstance(getattr(self, "stop", None), list) and len(self.stop) > 4:
            raise ValueError("'stop' takes at most 4 strings")
        return self


# --- errors ---
class ErrorBody(BaseModel):
    message: str = Field(description="One sentence saying what was wrong.")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                      "not_found_error, rate_limit_error, server_error, ...")
    param: str | None = Field(None, description="The request field at fault, dotted (e.g. messages.0.content).")
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in the OpenAI layout, so OpenAI clients show its message."""

    error: ErrorBody


# --- OpenAI-compatible ---
class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(RequestModel):
    include_usage: bool = False


class ChatCompletionRequest(_StopChecked):
    model: Text = Field(description="Any name: one model is served, the active version.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (deprecated alias "
                                   "of max_completion_tokens); default: the max_new_tokens setting.")
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1: greedy decoding gives one answer.")
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted; decoding is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Accepted; decoding is greedy.")
    seed: int | None = None
    user: Text | None = Field(None, description="Ignored: interactions belong to the API key's owner.")

    @model_validator(mode="after")
    def _ends_with_a_request(self):
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must not be the assistant's: there is nothing to answer")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str = Field(description="chatcmpl-<interaction id>: the id to send feedback to.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="The model version that answered ('base' = the base model).")
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`data: <json>`; the stream
    ends with `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionRequest(_StopChecked):
    model: Text
    prompt: Text | list[Text] = Field(description="The text to continue, as is (no chat template); "
                                      "a list of up to 16 prompts is answered together.")
    max_tokens: int | None = Field(None, ge=1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = Field(False, description="Put the prompt in front of the completion.")
    n: int = Field(1, ge=1, le=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    user: Text | None = None

    @model_validator(mode="after")
    def _prompts(self):
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) <= 16:
            raise ValueError("'prompt' must be a string or a list of 1 to 16 strings")
        if self.stream and isinstance(self.prompt, list) and len(self.prompt) > 1:
            raise ValueError("streaming answers one prompt at a time: send 'prompt' as a string")
        return self


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None
    interaction_id: int | None = Field(None, description="selftrain extension: where to send feedback.")


class TextCompletion(BaseModel):
    id: str = Field(description="cmpl-<id of the first interaction>")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- native ---
class GenerateRequest(RequestModel):
    prompt: NonEmptyText = Field(description="What the code should do.")
    tests: Text | None = Field(None, description="Assert lines that check the answer (kept for evaluation).")
    entry_point: Text | None = Field(None, max_length=200, description="The function the tests call.")
    max_tokens: int | None = Field(None, ge=1)


class GenerateResponse(BaseModel):
    interaction_id: int
    code: str
    explanation: str
    model_version: str | None = Field(description="None = the base model.")
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


class FeedbackRequest(RequestModel):
    rating: int | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (great).")
    accepted: bool | None = Field(None, description="Did you use the answer (true) or reject it (false)?")
    corrected_code: Text | None = Field(None, description="The code it should have written.")
    comment: Text | None = None

    @model_validator(mode="after")
    def _says_something(self):
        if self.rating is None and self.accepted is None and not self.corrected_code and not self.comment:
            raise ValueError("feedback needs at least one of: rating, accepted, corrected_code, comment")
        return self


class FeedbackResponse(BaseModel):
    feedback_id: int
    interaction_id: int


class PreferenceRequest(RequestModel):
    prompt: NonEmptyText
    chosen: NonEmptyText = Field(description="The better answer.")
    rejected: NonEmptyText = Field(description="The worse answer.")
    interaction_id: int | None = Field(None, ge=1, le=MAX_ID, description="The interaction it is about, if any.")

    @model_validator(mode="after")
    def _differ(self):
        if self.chosen == self.rejected:
            raise ValueError("'chosen' and 'rejected' must differ")
        return self


class PreferenceResponse(BaseModel):
    id: int


class FeedbackSummaryOut(BaseModel):
    rating: int | None = None
    accepted: bool | None = None
    corrected_code: str | None = None
    comment: str | None = None


class InteractionOut(BaseModel):
    id: int
    created_at: Timestamp
    user: str
    source: str
    prompt: str
    code: str
    explanation: str
    tests: str | None
    model_version: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    feedback: FeedbackSummaryOut


class InteractionPage(BaseModel):
    items: list[InteractionOut] = Field(description="Newest first.")
    next_before: int | None = Field(description="Pass as `before` for the next page; null on the last.")


# --- admin ---
class JobOut(BaseModel):
    id: int
    type: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    payload: dict
    result: dict | None
    error: str | None


class VersionOut(BaseModel):
    id: str
    created_at: Timestamp
    parent_id: str | None
    base_model: str
    dataset_snapshot_id: str | None
    success: bool = Field(description="Passed its evaluation gate.")
    is_active: bool
    activated_at: Timestamp | None
    metrics: dict


class VersionList(BaseModel):
    active: str | None = Field(description="The active version in the database; null = the base model.")
    serving: str | None = Field(description="The version this server's model is now (it follows "
                                "`active` within a batch or two); null = the base model.")
    versions: list[VersionOut]


class AlertOut(BaseModel):
    id: int
    created_at: Timestamp
    kind: str
    message: str
    run_id: str | None
    resolved: bool


class ImportResult(BaseModel):
    added: int
    skipped: int = Field(description="Lines whose id was already imported.")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model_version: str | None = Field(description="The version in memory; null = the base model.")
    queue_depth: int
    load_error: str | None

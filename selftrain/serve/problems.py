"""How the API says no: every error is one sentence in the OpenAI error layout.

`ApiError` carries a status and a message; the handlers here turn it, FastAPI's
validation errors (422, naming the field), Starlette's 404/405 and unexpected
exceptions (500, logged, no traceback to the client) into `ErrorResponse` bodies.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from selftrain.errors import SelftrainError
from selftrain.serve.schemas import ErrorResponse

log = logging.getLogger("selftrain.serve")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _described(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


UNAUTHORIZED = {401: _described("No valid API key (send `Authorization: Bearer <key>`).")}
FORBIDDEN = {403: _described("The key's role may not do this (admin routes need an admin key).")}
NOT_FOUND = {404: _described("No such thing, or it belongs to another user.")}
INVALID = {422: _described("The request is invalid; `error.param` names the field.")}
BUSY = {429: _described("The generation queue is full; retry after `Retry-After` seconds."),
        503: _described("The model is not loaded or the server is shutting down.")}
CONFLICT = {409: _described("The request conflicts with the current state.")}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names union branches ("str", "list[...]", "function-after[...]") in the location
    return ".".join(p for p in parts if p not in ("str", "int", "float", "bool", "none")
                    and "[" not in p and not p.startswith("function-"))


def validation_message(errors) -> tuple[str, str | None]:
    """One sentence naming the first bad field (and how many more there are)."""
    first = errors[0]
    field = _field(first.get("loc", ())) or None
    msg = str(first.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    text = f"Field '{field}': {msg}." if field else f"The request body is invalid: {msg}."
    fields = {_field(e.get("loc", ())) for e in errors} - {field}
    if fields:
        text += f" ({len(fields)} more field{'s' if len(fields) > 1 else ''} invalid.)"
    return text, field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, field = validation_message(exc.errors())
        return error_response(422, message, field)

    @app.exception_handler(SelftrainError)
    async def _selftrain_error(request: Request, exc: SelftrainError):
        return error_response(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not even parse the body: still a bad body
            return error_response(422, "The request body is not valid JSON.", "body")
        message = {404: "There is no such route.", 405: "This route does not take that method."}.get(
            exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error ({type(exc).__name__}); it has been logged.")

"""The dashboard's plumbing: who is looking, forms, templates, and signing in and out.

Pages are HTML rendered on the server (Jinja2, autoescaped) with SVG charts; the one
script (`static/dashboard.js`) only refreshes the job table. Every page route uses
`PageRoute`, so whatever goes wrong (not signed in, not allowed, not found, a bad query
parameter) becomes a page with one sentence, or a redirect to the sign-in form, never
the API's JSON error body or a traceback.

Pages send a strict Content-Security-Policy (scripts, styles and forms from this origin
only; no inline script or style), so text from interactions can never run as code here
even if escaping were to miss something.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from selftrain.dashboard.session import (COOKIE, LIFETIME_S, Session, csrf_matches, decode, encode, load_secret,
                                         new_session)
from selftrain.serve.keys import ApiKey, Principal
from selftrain.serve.problems import validation_message
from selftrain.serve.schemas import MAX_ID

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
MAX_FORM_BYTES = 1 << 20
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store"}
# What a redirect's ?done=... says on the next page: fixed sentences, so a link cannot put words in our mouth.
DONE = {"feedback": "Thank you: your feedback is saved.", "submitted": "The job is queued.",
        "cancelled": "The job is cancelled.", "retried": "The job is queued again.",
        "activated": "The version is active; the server swaps it in without a restart.",
        "rolled_back": "Rolled back; the server swaps the model in without a restart.",
        "resolved": "The alert is resolved.", "signed_out": "You are signed out."}


class PageError(Exception):
    """Shown as a page: the status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SignInRequired(Exception):
    pass


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page: the key's principal and the session it signed in."""

    principal: Principal
    session: Session

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


@dataclass(frozen=True)
class Form:
    viewer: Viewer
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


class DashboardState:
    """One app's signing secret, templates, and key lookups by id (cached like Bearer keys)."""

    def __init__(self, settings, db):
        import jinja2

        self.db = db
        self.secret = load_secret(settings.workspace)
        self.ttl_s = float(getattr(settings, "serve_key_cache_s", 10.0))
        self._keys: dict[int, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                            trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(when=when, ago=ago, pct=pct, num=num, pretty=pretty)

    def cached(self, key_id: int) -> tuple[bool, Principal | None]:
        entry = self._keys.get(key_id)
        if entry and entry[1] > time.monotonic():
            return True, entry[0]
        return False, None

    def lookup(self, key_id: int) -> Principal | None:
        with self.db.session() as session:
            row = session.get(ApiKey, key_id)
            principal = Principal(row.id, row.name, row.role) if row and row.revoked_at is None else None
        with self._lock:
            if len(self._keys) >= 10_000:
                self._keys.clear()
            self._keys[key_id] = (principal, time.monotonic() + self.ttl_s)
        return principal


def state(request: Request) -> DashboardState:
    found = getattr(request.app.state, "dashboard", None)
    if found is None:  # first page since start: created here, so app.py needs only the router
        found = request.app.state.dashboard = DashboardState(request.app.state.settings, request.app.state.db)
    return found


# --- template filters -------------------------------------------------------------------

def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def when(moment: datetime | None) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    seconds = max(0, int((datetime.now(timezone.utc) - _utc(moment)).total_seconds()))
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def pct(value) -> str:
    return "–" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{100 * value:.1f}%"


def num(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


# --- sessions, pages and forms ----------------------------------------------------------

def current_session(request: Request) -> Session | None:
    return decode(request.cookies.get(COOKIE), state(request).secret)


def set_session(response: Response, request: Request, session: Session) -> None:
    response.set_cookie(COOKIE, encode(session, state(request).secret), max_age=LIFETIME_S, path="/",
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")


def render(request: Request, template: str, *, status: int = 200, session: Session | None = None,
           **context) -> HTMLResponse:
    viewer = context.pop("viewer", None) or getattr(request.state, "viewer", None)
    session = session or (viewer.session if viewer else current_session(request))
    html = state(request).templates.get_template(template).render(
        viewer=viewer, csrf=session.csrf if session else "",
        done=DONE.get(request.query_params.get("done", "")), **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)  # 303: the browser follows with a GET


async def principal_of(request: Request, session: Session | None) -> Principal | None:
    """Whom a session's key stands for now; None when not signed in, or the key was revoked."""
    if session is None or not session.signed_in:
        return None
    keys = state(request)
    found, principal = keys.cached(session.key_id)
    return principal if found else await run_in_threadpool(keys.lookup, session.key_id)


async def viewer(request: Request) -> Viewer:
    session = current_session(request)
    principal = await principal_of(request, session)
    if principal is None:
        raise SignInRequired
    request.state.viewer = Viewer(principal, session)
    return request.state.viewer


async def admin_viewer(who: Viewer = Depends(viewer)) -> Viewer:
    if not who.is_admin:
        raise PageError(403, "This page needs an admin key; you are signed in with a user key.")
    return who


async def read_form(request: Request, session: Session | None) -> dict[str, str]:
    """The posted fields (last value of each), once the session's CSRF token is checked."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise PageError(415, "Send this form from the dashboard page (an HTML form post).")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "The form is larger than 1 MiB; shorten the text and send it again.")
    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", errors="replace"),
                                             keep_blank_values=True).items()}
    if not csrf_matches(session, fields.get("csrf")):
        raise PageError(403, "This form has expired or did not come from this dashboard; reload the page "
                        "and send it again (cookies must be on).")
    return fields


async def signed_form(request: Request, who: Viewer = Depends(viewer)) -> Form:
    return Form(who, await read_form(request, who.session))


async def admin_form(request: Request, who: Viewer = Depends(admin_viewer)) -> Form:
    return Form(who, await read_form(request, who.session))


def row_id(value: int, what: str) -> int:
    """An id from a path, or the "not found" page for one that no row can have (ids are
    32-bit on PostgreSQL, and SQLite refuses integers past 64 bits outright)."""
    if not 1 <= value <= MAX_ID:
        raise PageError(404, f"There is no {what} with id {value}.")
    return value


def page_number(value: str | None, name: str, *, low: int = 1, high: int = MAX_ID) -> int | None:
    """A whole-number query parameter, or a page saying what was wrong with it."""
    if value is None or value == "":
        return None
    # isdecimal, not isdigit: "²" is a digit that int() refuses; the length cap keeps int() cheap
    if len(value) > 12 or not value.strip().isdecimal() or not low <= int(value) <= high:
        raise PageError(422, f"'{name}' must be a whole number from {low} to {high}, got {value[:40]!r}.")
    return int(value)


class PageRoute(APIRoute):
    """A route whose failures are pages: see the module docstring."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                if "\x00" in request.url.path or "\x00" in unquote(request.url.query):
                    # PostgreSQL text cannot hold NUL; refuse it on every backend alike
                    raise PageError(422, "The address must not contain NUL characters.")
                return await handler(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return redirect("/login?next=" + quote(target if request.method == "GET" else "/", safe=""))
            except PageError as exc:
                return render(request, "error.html", status=exc.status, message=exc.message)
            except RequestValidationError as exc:
                return render(request, "error.html", status=422, message=validation_message(exc.errors())[0])

        return handle


def page_router() -> APIRouter:
    return APIRouter(route_class=PageRoute, include_in_schema=False)


router = page_router()


def safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect through sign-in."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) \
            or any(c in target for c in "\r\n\x00"):
        return "/"
    return target


@router.get("/login")
async def login_form(request: Request, next: str = "/"):
    session = current_session(request)
    if await principal_of(request, session) is not None:
        return redirect(safe_next(next))
    if session is None or session.signed_in:  # none yet, or its key was revoked: a fresh one
        session = new_session()
    response = render(request, "login.html", session=session, next=safe_next(next))
    set_session(response, request, session)
    return response


@router.post("/login")
async def login(request: Request):
    session = current_session(request)
    fields = await read_form(request, session)
    key, target = fields.get("key", "").strip(), safe_next(fields.get("next"))
    if not key:
        return render(request, "login.html", status=422, session=session, next=target,
                      error="Paste an API key to sign in (`selftrain keys create --name NAME` makes one).")
    keys = request.app.state.keys
    found, principal = keys.cached(key)
    if not found:
        principal = await run_in_threadpool(keys.lookup, key)
    if principal is None:
        return render(request, "login.html", status=401, session=session, next=target,
                      error="That API key is not valid or has been revoked.")
    response = redirect(target)
    set_session(response, request, new_session(principal.key_id))
    return response


@router.post("/logout")
async def logout(request: Request):
    await read_form(request, current_session(request))
    response = redirect("/login?done=signed_out")
    set_session(response, request, new_session())
    return response


@router.get("/assets/{name}")
async def asset(name: str):
    if name not in ASSETS:
        raise PageError(404, f"There is no dashboard asset {name[:80]!r}.")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=3600"})

"""Dashboard sessions: a signed cookie and a CSRF token per session.

The cookie holds {key id, CSRF token, expiry} as base64url JSON, then the HMAC-SHA256 of
that under a secret kept in the workspace (`dashboard_secret`, 32 random bytes, created
once with mode 0600). It is signed, not encrypted: nothing in it is secret, and the API
key itself never leaves the sign-in form. Every request reads the key again by id
(cached a few seconds, as Bearer keys are), so revoking a key ends its sessions too.

CSRF: every form that changes something carries the session's token in a hidden field,
compared in constant time with the token in the cookie. Another site can make a browser
post here (SameSite=Lax withholds the cookie from most such posts, but not from every
browser or from same-site subdomains), yet it cannot read our pages to learn the token.
Visitors who have not signed in get an anonymous session too, so the sign-in form is
protected the same way (a forged sign-in would put the victim in the attacker's account).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "selftrain_session"
SECRET_FILE = "dashboard_secret"
LIFETIME_S = 12 * 3600  # a working day; signing in again takes one paste of the key


@dataclass(frozen=True)
class Session:
    key_id: int | None  # None: not signed in (the session exists for the sign-in form's token)
    csrf: str
    expires: int  # unix seconds

    @property
    def signed_in(self) -> bool:
        return self.key_id is not None


def new_session(key_id: int | None = None, *, now: float | None = None) -> Session:
    """A fresh session with its own CSRF token (signing in always starts a new one, so a
    token seen before sign-in is worth nothing after it)."""
    return Session(key_id, secrets.token_urlsafe(24), int(now if now is not None else time.time()) + LIFETIME_S)


def load_secret(workspace: Path) -> bytes:
    """The workspace's signing secret, created on first use (readable by its owner only)."""
    path = Path(workspace) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret.hex())
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(body: str, secret: bytes) -> str:
    return _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())


def encode(session: Session, secret: bytes) -> str:
    body = _b64(json.dumps({"k": session.key_id, "c": session.csrf, "e": session.expires},
                           separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_signature(body, secret)}"


def decode(value: str | None, secret: bytes, *, now: float | None = None) -> Session | None:
    """The session in a cookie value; None when it is missing, forged, malformed or expired."""
    if not value or value.count(".") != 1 or len(value) > 512:
        return None
    body, signature = value.split(".")
    try:
        if not hmac.compare_digest(signature, _signature(body, secret)):
            return None
        data = json.loads(_unb64(body))
        session = Session(data["k"], data["c"], data["e"])
    except (ValueError, KeyError, TypeError, UnicodeError):
        return None
    if not isinstance(session.csrf, str) or not isinstance(session.expires, int) \
            or not (session.key_id is None or isinstance(session.key_id, int)):
        return None
    if session.expires <= (now if now is not None else time.time()):
        return None
    return session


def csrf_matches(session: Session | None, token: str | None) -> bool:
    return bool(session and token) and hmac.compare_digest(session.csrf.encode(), token.encode())

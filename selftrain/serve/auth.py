"""Who is asking: API keys in `Authorization: Bearer <key>`, roles user and admin.

Lookups are cached for `serve_key_cache_s` seconds (default 10) so a burst of requests
costs one database query per key, not one each; a revoked key therefore stops working
within that time. Unknown keys are cached too, so a flood of bad keys cannot turn into
a flood of queries.
"""

from __future__ import annotations

import threading
import time

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from selftrain.serve.keys import Principal, find_key, hash_key
from selftrain.serve.problems import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key from `selftrain keys create`.")


class KeyCache:
    MAX_ENTRIES = 10_000

    def __init__(self, db, ttl_s: float = 10.0):
        self.db, self.ttl_s = db, ttl_s
        self._entries: dict[str, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, Principal | None]:
        entry = self._entries.get(hash_key(key))
        if entry and entry[1] > time.monotonic():
            return True, entry[0]
        return False, None

    def lookup(self, key: str) -> Principal | None:
        with self.db.session() as session:
            principal = find_key(session, key)
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[hash_key(key)] = (principal, time.monotonic() + self.ttl_s)
        return principal


async def current_principal(request: Request,
                            credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "This route needs an API key: send 'Authorization: Bearer <key>' "
                       "(`selftrain keys create` makes one).", headers={"WWW-Authenticate": "Bearer"})
    keys: KeyCache = request.app.state.keys
    found, principal = keys.cached(credentials.credentials)
    if not found:
        principal = await run_in_threadpool(keys.lookup, credentials.credentials)
    if principal is None:
        raise ApiError(401, "The API key is not valid or has been revoked.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return principal


async def admin_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "This route needs an admin key.")
    return principal

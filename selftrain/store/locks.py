"""One named lock held to the end of a transaction, on both backends.

PostgreSQL: a transaction-level advisory lock, so other transactions taking the same
lock wait and every other query runs freely. SQLite allows one writer at a time, so
starting the transaction as a writer (BEGIN IMMEDIATE) is the lock; the `busy_timeout`
the store sets makes a second writer wait instead of failing. Starting it as a writer
matters: a deferred transaction that reads, then writes after another connection
committed, fails with SQLITE_BUSY instead of waiting.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session


def hold_lock(session: Session, name: str) -> None:
    """Block until this session's transaction holds the lock `name`; it is released by
    the commit or rollback that ends the transaction."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        return
    dbapi = connection.connection.dbapi_connection
    if not dbapi.in_transaction:  # already writing means already holding SQLite's one write lock
        connection.exec_driver_sql("BEGIN IMMEDIATE")

"""API keys: created once, shown once, stored only as a hash.

A key is 32 random bytes (256 bits) from `secrets`, so its SHA-256 is enough: a slow
password hash (bcrypt, argon2) exists to make guessing *low-entropy* secrets expensive,
and nobody can enumerate 2^256 keys however fast the hash is. A fast hash also lets
every request find its key with one indexed lookup instead of ~100 ms of bcrypt CPU.

A key belongs to a `name` (the user it acts for; interactions are stored under that
name, so several keys of one person share their history) and has a role: `user` (ask,
read and rate one's own interactions) or `admin` (everything, including versions, jobs,
export and import).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from selftrain.errors import SelftrainError
from selftrain.store.schema import Base, utcnow

ROLES = ("user", "admin")
KEY_PREFIX = "st-"


class ApiKey(Base):
    """One API key (its hash, never the key itself)."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("role IN ('user', 'admin')", name="ck_api_keys_role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    name: Mapped[str] = mapped_column(String(200))  # the user the key acts for
    role: Mapped[str] = mapped_column(String(10))  # user | admin
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, as far as the API cares."""

    key_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str, role: str = "user") -> tuple[ApiKey, str]:
    """Store a new key and return (its row, the key). The key is not kept anywhere:
    show it to the person once."""
    if role not in ROLES:
        raise SelftrainError(f"A key's role must be 'user' or 'admin', got {role!r}.")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise SelftrainError("A key's name must be 1 to 200 characters.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, role=role, prefix=key[:10], key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def find_key(session: Session, key: str) -> Principal | None:
    """The principal a presented key stands for, or None if it is unknown or revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key),
                                              ApiKey.revoked_at.is_(None)))
    return Principal(row.id, row.name, row.role) if row else None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise SelftrainError(f"There is no API key with id {key_id}; `selftrain keys list` shows them.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def create_first_admin_key(db) -> str | None:
    """An admin key for a database that has no key at all yet (`selftrain init` prints
    it once); None when keys already exist, so running init again creates nothing."""
    with db.session() as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        _, key = create_key(session, "admin", "admin")
    return key

"""Connecting to the database and bringing its schema up to date.

SQLite is the default (a file in the workspace, in WAL mode so the API can write while
a cycle reads); PostgreSQL works through `database_url` with the same code.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from selftrain.errors import SelftrainError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode across application crashes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")  # wait for a writer instead of failing at once
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`, checked by connecting once (a bad URL fails here, clearly)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise SelftrainError(f"The database URL {url!r} is not usable: {exc}.") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect():
            pass
    except (OperationalError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SelftrainError(f"Could not connect to the database at {engine.url!r}: {reason}.") from None
    return engine


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration the database lacks (idempotent).

    Revisions may branch from one another (each feature adds its own tables); "heads"
    applies all branches, whatever order they were written in.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "heads")  # feature branches of the schema may each add a head


class Database:
    """The engine and session factory of one workspace's database."""

    def __init__(self, url: str, *, upgrade: bool = True):
        self.engine = make_engine(url)
        if upgrade:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self):
        """A session that commits on success and rolls back on any error."""
        session: Session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def close(self) -> None:
        self.engine.dispose()

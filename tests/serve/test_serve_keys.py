"""API keys: shown once, stored hashed, revocable; the CLI that manages them."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from selftrain.errors import SelftrainError
from selftrain.serve.keys import create_first_admin_key, create_key, find_key, list_keys, revoke_key


def test_keys_are_stored_hashed_and_can_be_revoked(sqlite_db):
    with sqlite_db.session() as session:
        row, key = create_key(session, "alice", "user")
    assert key.startswith("st-") and len(key) > 40
    with sqlite_db.engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix FROM api_keys")).one()
    assert key not in stored.key_hash and stored.key_hash != key and key.startswith(stored.prefix)
    with sqlite_db.session() as session:
        principal = find_key(session, key)
        assert (principal.name, principal.role, principal.is_admin) == ("alice", "user", False)
        assert find_key(session, key + "x") is None
        revoke_key(session, row.id)
    with sqlite_db.session() as session:
        assert find_key(session, key) is None
        with pytest.raises(SelftrainError, match="no API key with id 99"):
            revoke_key(session, 99)
        with pytest.raises(SelftrainError, match="'user' or 'admin'"):
            create_key(session, "x", "root")


def test_the_first_admin_key_is_made_once(sqlite_db):
    key = create_first_admin_key(sqlite_db)
    assert key and create_first_admin_key(sqlite_db) is None
    with sqlite_db.session() as session:
        assert find_key(session, key).is_admin and len(list_keys(session)) == 1


def test_keys_cli(workspace, monkeypatch):
    from selftrain.cli_serve import keys_app

    monkeypatch.setenv("SELFTRAIN_WORKSPACE", str(workspace))
    runner = CliRunner()
    created = runner.invoke(keys_app, ["create", "--name", "alice", "--role", "admin"])
    assert created.exit_code == 0, created.output
    key = re.search(r"st-\S+", created.output).group(0)
    listed = runner.invoke(keys_app, ["list"])
    assert "alice" in listed.output and "admin" in listed.output and key not in listed.output
    assert runner.invoke(keys_app, ["revoke", "1"]).exit_code == 0
    bad = runner.invoke(keys_app, ["create", "--name", "bob", "--role", "boss"])
    assert bad.exit_code != 0 and isinstance(bad.exception, SelftrainError)

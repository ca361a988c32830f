"""Session cookies and CSRF tokens: signed, tamper-evident, expiring; the secret is made
once per workspace, readable by its owner only."""

from __future__ import annotations

import stat

from selftrain.dashboard.session import (LIFETIME_S, SECRET_FILE, Session, csrf_matches, decode, encode,
                                         load_secret, new_session)


def test_a_session_survives_the_round_trip_and_nothing_else_does(tmp_path):
    secret = load_secret(tmp_path)
    session = new_session(7, now=1000)
    value = encode(session, secret)
    assert decode(value, secret, now=1001) == session == Session(7, session.csrf, 1000 + LIFETIME_S)
    body, signature = value.split(".")
    forged = encode(Session(1, session.csrf, session.expires), secret).split(".")[0] + "." + signature
    assert decode(forged, secret, now=1001) is None  # another key id under the old signature
    assert decode(value, b"another secret" * 3, now=1001) is None
    assert decode(value, secret, now=1000 + LIFETIME_S) is None  # expired
    for junk in (None, "", "abc", "a.b.c", "!!!.???", "x" * 600):
        assert decode(junk, secret) is None


def test_the_secret_is_created_once_with_mode_0600(tmp_path):
    first = load_secret(tmp_path)
    assert len(first) == 32 and load_secret(tmp_path) == first
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600


def test_csrf_tokens_belong_to_one_session():
    a, b = new_session(1), new_session(1)
    assert a.csrf != b.csrf  # signing in again starts a fresh token
    assert csrf_matches(a, a.csrf) and not csrf_matches(a, b.csrf)
    assert not csrf_matches(a, "") and not csrf_matches(a, None) and not csrf_matches(None, a.csrf)

"""Storage tests; each runs on SQLite and, in the `postgres` tier, on the real server."""

import pytest
from sqlalchemy.exc import IntegrityError

from selftrain.errors import SelftrainError
from selftrain.store.db import Database
from selftrain.store.records import (count_unconsumed, record_feedback, record_interaction,
                                     summarize_feedback, unconsumed_interactions)
from selftrain.store.schema import ModelVersion, PreferencePair


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'test.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    yield database
    database.close()


def test_migrations_create_every_table_and_are_idempotent(db):
    expected = {"interactions", "feedback", "preference_pairs", "cycles", "dataset_snapshots",
                "model_versions", "jobs", "evaluation_runs", "training_metrics", "alerts",
                "alembic_version"}
    assert expected <= set(db.table_names())
    Database(str(db.engine.url.render_as_string(hide_password=False))).close()  # upgrade again: no-op


def test_interaction_and_feedback_round_trip(db):
    with db.session() as s:
        i = record_interaction(s, prompt="Write `f`", code="def f():\n    return 1", user="alice",
                               model_version=None, latency_ms=12.5, prompt_tokens=5, completion_tokens=9)
        record_feedback(s, i.id, rating=2, comment="meh")
        record_feedback(s, i.id, accepted=True, rating=5)
        iid = i.id
    with db.session() as s:
        (row,) = unconsumed_interactions(s)
        summary = summarize_feedback(row.feedback)
    assert row.id == iid and row.user == "alice" and row.latency_ms == 12.5
    assert (summary.rating, summary.accepted, summary.comment) == (5, True, "meh")


def test_correction_becomes_a_preference_pair(db):
    with db.session() as s:
        i = record_interaction(s, prompt="p", code="def f(): return 0")
        record_feedback(s, i.id, accepted=False, corrected_code="def f(): return 1")
    with db.session() as s:
        (pair,) = s.query(PreferencePair).all()
    assert (pair.chosen, pair.rejected, pair.source) == ("def f(): return 1", "def f(): return 0", "correction")


@pytest.mark.parametrize("kwargs, message", [
    ({"rating": 6}, "rating must be an integer from 1 to 5"),
    ({}, "Feedback needs at least one of"),
])
def test_bad_feedback_is_refused_and_nothing_is_written(db, kwargs, message):
    with db.session() as s:
        iid = record_interaction(s, prompt="p", code="x = 1").id
    with pytest.raises(SelftrainError, match=message):
        with db.session() as s:
            record_feedback(s, iid, **kwargs)
    with db.session() as s:
        assert unconsumed_interactions(s)[0].feedback == []


def test_feedback_on_unknown_interaction(db):
    with pytest.raises(SelftrainError, match="no interaction with id 404"):
        with db.session() as s:
            record_feedback(s, 404, rating=3)


def test_rating_range_is_also_enforced_by_the_database(db):
    from selftrain.store.schema import Feedback

    with db.session() as s:
        iid = record_interaction(s, prompt="p", code="x").id
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(Feedback(interaction_id=iid, rating=0))


def test_database_allows_only_one_active_version(db):
    with db.session() as s:
        for vid in ("v0001", "v0002"):
            s.add(ModelVersion(id=vid, base_model="b", adapter_path="/x", is_active=False))
    with db.session() as s:
        s.get(ModelVersion, "v0001").is_active = True
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.get(ModelVersion, "v0002").is_active = True


def test_count_unconsumed(db):
    with db.session() as s:
        for n in range(3):
            record_interaction(s, prompt=f"p{n}", code="x")
        assert count_unconsumed(s) == 3

"""The native and admin routes: generate, feedback, preferences, history, versions,
jobs, alerts, export/import, health and metrics; who may see and do what. Each test
runs on SQLite and, in the postgres tier, on the real server."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftrain.serve.app import create_app
from selftrain.serve.engine import GenerationEngine
from selftrain.store.records import record_interaction
from selftrain.store.schema import Alert, Feedback, Interaction, PreferencePair


class Api:
    def __init__(self, client, keys, db, engine):
        self.client, self.keys, self.db, self.engine = client, keys, db, engine

    def call(self, method, path, who="alice", headers=None, **kwargs):
        headers = dict(headers or {})
        if who:
            headers["Authorization"] = f"Bearer {getattr(self.keys, who)}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def add(self, user: str, prompt: str = "p") -> int:
        with self.db.session() as session:
            return record_interaction(session, user=user, source="api", prompt=prompt, code="x = 1").id

    def count(self, model) -> int:
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def api(settings, db, key_maker):
    engine = GenerationEngine(settings, db).start()
    keys = key_maker(db)
    try:
        with TestClient(create_app(settings, db, engine=engine)) as client:
            yield Api(client, keys, db, engine)
    finally:
        engine.stop()


def test_generate_stores_the_answer_with_its_tests(api):
    r = api.call("POST", "/api/generate", json={"prompt": "Write `is_even(n)`.", "tests": "assert is_even(2)",
                                                "max_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Selftrain-Interaction"] == str(body["interaction_id"])
    assert body["completion_tokens"] <= 6 and body["model_version"] is None
    with api.db.session() as session:  # committed before the response came back
        row = session.get(Interaction, body["interaction_id"])
        assert (row.user, row.tests, row.code) == ("alice", "assert is_even(2)", body["code"])
    shown = api.call("GET", f"/api/interactions/{body['interaction_id']}").json()
    assert shown["prompt"] == "Write `is_even(n)`." and shown["feedback"]["rating"] is None


def test_feedback_only_on_ones_own_interactions(api):
    mine, theirs = api.add("alice"), api.add("bob")
    ok = api.call("POST", f"/api/interactions/{mine}/feedback",
                  json={"rating": 2, "accepted": False, "corrected_code": "x = 2", "comment": "off"})
    assert ok.status_code == 201 and ok.json()["interaction_id"] == mine
    assert api.count(PreferencePair) == 1  # the correction became a preference pair
    for target in (theirs, 999_999):  # someone else's and unknown look the same: 404
        r = api.call("POST", f"/api/interactions/{target}/feedback", json={"rating": 5})
        assert r.status_code == 404 and r.json()["error"]["param"] == "interaction_id"
    assert api.call("POST", f"/api/interactions/{theirs}/feedback", who="admin", json={"rating": 5}).status_code == 201
    assert api.call("GET", f"/api/interactions/{theirs}").status_code == 404
    assert api.call("GET", f"/api/interactions/{mine}").json()["feedback"] == {
        "rating": 2, "accepted": False, "corrected_code": "x = 2", "comment": "off"}
    assert api.count(Feedback) == 2


@pytest.mark.parametrize("body, field", [
    ({"rating": 6}, "rating"), ({"rating": "great"}, "rating"), ({"accepted": "maybe"}, "accepted"),
    ({}, None), ({"comment": "a\x00b"}, "comment")])
def test_invalid_feedback_is_422_naming_the_field(api, body, field):
    r = api.call("POST", f"/api/interactions/{api.add('alice')}/feedback", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert (f"'{field}'" in error["message"]) if field else "at least one" in error["message"]


def test_preferences(api):
    r = api.call("POST", "/api/preferences", json={"prompt": "p", "chosen": "a", "rejected": "b"})
    assert r.status_code == 201
    assert api.call("POST", "/api/preferences", json={"prompt": "p", "chosen": "a", "rejected": "a"}).status_code == 422
    other = api.call("POST", "/api/preferences", json={"prompt": "p", "chosen": "a", "rejected": "b",
                                                       "interaction_id": api.add("bob")})
    assert other.status_code == 404
    with api.db.session() as session:
        assert session.get(PreferencePair, r.json()["id"]).user == "alice"


def test_history_pages_and_shows_users_only_their_own(api):
    alice = [api.add("alice", f"a{i}") for i in range(5)]
    bob = api.add("bob")
    first = api.call("GET", "/api/interactions", params={"limit": 2}).json()
    assert [i["id"] for i in first["items"]] == alice[:-3:-1]
    second = api.call("GET", "/api/interactions", params={"limit": 2, "before": first["next_before"]}).json()
    last = api.call("GET", "/api/interactions", params={"limit": 2, "before": second["next_before"]}).json()
    assert [i["id"] for i in second["items"] + last["items"]] == alice[2::-1] and last["next_before"] is None
    ignored = api.call("GET", "/api/interactions", params={"user": "bob"}).json()["items"]  # users see their own
    assert [i["id"] for i in ignored] == alice[::-1]
    everyone = api.call("GET", "/api/interactions", who="admin").json()["items"]
    assert {i["id"] for i in everyone} == {*alice, bob}
    only_bob = api.call("GET", "/api/interactions", who="admin", params={"user": "bob"}).json()["items"]
    assert [i["id"] for i in only_bob] == [bob]


def test_keys_and_roles(api):
    assert api.call("GET", "/api/interactions", who=None).status_code == 401
    bad = api.client.get("/api/interactions", headers={"Authorization": "Bearer st-nope"})
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    for method, path in [("GET", "/api/admin/versions"), ("GET", "/api/admin/jobs"), ("GET", "/api/admin/alerts"),
                         ("GET", "/api/admin/export"), ("POST", "/api/admin/versions/rollback")]:
        assert api.call(method, path).status_code == 403
        assert api.call(method, path, who=None).status_code == 401


def test_versions_through_the_api(api, add_version):
    listed = api.call("GET", "/api/admin/versions", who="admin").json()
    assert listed == {"active": None, "serving": None, "versions": []}
    assert api.call("POST", "/api/admin/versions/v0042/activate", who="admin").status_code == 404
    assert api.call("POST", "/api/admin/versions/rollback", who="admin").status_code == 409
    version = add_version(api.db)
    r = api.call("POST", f"/api/admin/versions/{version}/activate", who="admin")
    assert r.status_code == 200 and r.json()["active"] == version
    back = api.call("POST", "/api/admin/versions/rollback", who="admin", json={"to_base": True})
    assert back.status_code == 200 and back.json()["active"] is None


def test_jobs_through_the_api(api):
    r = api.call("POST", "/api/admin/jobs", who="admin", json={"type": "sleep", "payload": {"seconds": 1.0}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert [j["id"] for j in api.call("GET", "/api/admin/jobs", who="admin").json()] == [job["id"]]
    assert api.call("GET", f"/api/admin/jobs/{job['id']}", who="admin").json()["type"] == "sleep"
    assert api.call("POST", f"/api/admin/jobs/{job['id']}/cancel", who="admin").json()["status"] == "cancelled"
    assert api.call("POST", f"/api/admin/jobs/{job['id']}/cancel", who="admin").status_code == 409
    assert api.call("POST", f"/api/admin/jobs/{job['id']}/retry", who="admin").json()["status"] == "queued"
    assert api.call("GET", "/api/admin/jobs/12345", who="admin").status_code == 404
    bad = api.call("POST", "/api/admin/jobs", who="admin", json={"type": "nap"})
    assert bad.status_code == 422 and "nap" in bad.json()["error"]["message"]


def test_alerts_through_the_api(api):
    with api.db.session() as session:
        session.add(Alert(kind="nan_loss", message="loss became NaN at step 3"))
    [alert] = api.call("GET", "/api/admin/alerts", who="admin", params={"resolved": False}).json()
    assert alert["kind"] == "nan_loss"
    assert api.call("POST", f"/api/admin/alerts/{alert['id']}/resolve", who="admin").json()["resolved"] is True
    assert api.call("GET", "/api/admin/alerts", who="admin", params={"resolved": False}).json() == []


def test_export_then_import_round_trips(api):
    mine = api.add("alice", "Write `f`.")
    api.call("POST", f"/api/interactions/{mine}/feedback", json={"rating": 4, "accepted": True})
    exported = api.call("GET", "/api/admin/export", who="admin")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    [line] = [json.loads(x) for x in exported.text.splitlines()]
    assert line["prompt"] == "Write `f`." and line["feedback"] == {"rating": 4, "accepted": True}
    line["id"] = "elsewhere-1"
    body = json.dumps(line) + "\n" + json.dumps({"id": "elsewhere-2", "prompt": "g"}) + "\n"
    r = api.call("POST", "/api/admin/import", who="admin", content=body,
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.json() == {"added": 2, "skipped": 0}
    again = api.call("POST", "/api/admin/import", who="admin", content=body)
    assert again.json() == {"added": 0, "skipped": 2}
    broken = api.call("POST", "/api/admin/import", who="admin", content='{"prompt": "ok"}\n{"prompt": 3}\n')
    assert broken.status_code == 422 and "line 2" in broken.json()["error"]["message"]
    assert "selftrain-import" not in broken.json()["error"]["message"]
    assert api.count(Interaction) == 3  # the broken file stored nothing


def test_health_and_metrics(api):
    assert api.client.get("/healthz").json() == {"status": "ok", "model_version": None, "queue_depth": 0,
                                                 "load_error": None}
    api.call("POST", "/api/generate", json={"prompt": "hi", "max_tokens": 2})
    text = api.client.get("/metrics").text
    assert 'selftrain_http_requests_total{method="POST",route="/api/generate",status="200"} 1' in text
    assert "selftrain_engine_generated_tokens_total" in text and 'selftrain_model_info{version="base"} 1' in text

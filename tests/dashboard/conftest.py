"""Fixtures for the dashboard tests: a workspace and database, a store seeded with
interactions, versions, jobs, runs and alerts, and a signed-in test client.

Most tests need no model: `ParkedEngine` stands in for the generation engine (it
reports the active version and counts refreshes; it never generates). The browser test
builds the real engine on the tiny model instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftrain.store.db import Database

CSRF = re.compile(r'name="csrf" value="([^"]+)"')

PAGES = ("/", "/interactions", "/jobs", "/versions", "/versions/v0002", "/versions/compare?a=v0001&b=v0002",
         "/training", "/training/cycle-1")


def listed_ids(html: str) -> list[int]:
    return list(dict.fromkeys(int(i) for i in re.findall(r'href="/interactions/(\d+)"', html)))


def alert_text(html: str) -> str:
    found = re.search(r'role="alert">(.*?)</p>', html, re.S)
    assert found, html[:500]
    return found.group(1).replace("&#39;", "'").replace("&#34;", '"').replace("&amp;", "&")


def count(db, model) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


class ParkedEngine:
    """An engine with no model: what the dashboard asks of one, answered from the registry."""

    def __init__(self, db: Database):
        self.db, self.refreshes = db, 0

    def stats(self) -> dict:
        from selftrain.registry import active_version

        with self.db.session() as session:
            active = active_version(session)
            return {"version": active.id if active else "base", "queue_depth": 0, "load_error": None}

    def refresh_version(self) -> None:
        self.refreshes += 1


@pytest.fixture
def dash_workspace(tmp_path, monkeypatch) -> Path:
    for key in list(os.environ):
        if key.startswith("SELFTRAIN_"):
            monkeypatch.delenv(key)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "selftrain.toml").write_text('base_model = "tiny"\nlearning_threshold = 10\n', encoding="utf-8")
    return ws


@pytest.fixture
def dash_settings(dash_workspace):
    from selftrain.config import load_settings

    return load_settings(dash_workspace)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dash_db(request, dash_settings):
    """The workspace's SQLite file, or (postgres tier) a fresh database on the real server."""
    url = dash_settings.resolved_database_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    yield database
    database.close()


@dataclass
class Keys:
    admin: str
    alice: str
    bob: str


def make_keys(db) -> Keys:
    from selftrain.serve.keys import create_key

    with db.session() as session:
        return Keys(admin=create_key(session, "root", "admin")[1], alice=create_key(session, "alice")[1],
                    bob=create_key(session, "bob")[1])


def add_version(db, versions_dir: Path, scratch: Path, *, success: bool = True, metrics: dict | None = None,
                eval_report: dict | None = None, snapshot: str | None = None, files: dict | None = None) -> str:
    """Register a version whose adapter folder holds `files` (a stand-in adapter unless given)."""
    from selftrain.registry import register

    adapter = scratch / f"adapter-{len(list(scratch.glob('adapter-*')))}"
    adapter.mkdir(parents=True)
    for name, content in (files or {"adapter_config.json": "{}"}).items():
        (adapter / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with db.session() as session:
        return register(session, adapter, versions_dir, base_model="tiny", parent_id=None,
                        dataset_snapshot_id=snapshot, training_config={"lora_r": 8}, metrics=metrics or {},
                        eval_report=eval_report or {}, success=success).id


@dataclass
class Seeded:
    keys: Keys
    alice_ids: list[int]
    bob_ids: list[int]
    versions: list[str]
    job_ids: dict[str, int]


def seed(db, tmp_path: Path) -> Seeded:
    """Two users' interactions (alice's answered by v0001), three versions (v0002 active,
    v0003 failed its gate), a cycle with a training run and an alert, jobs in each state."""
    from selftrain import scheduler
    from selftrain.registry import activate
    from selftrain.store.records import record_feedback, record_interaction
    from selftrain.store.schema import Alert, Cycle, DatasetSnapshot, EvaluationRun, TrainingMetric

    keys = make_keys(db)
    with db.session() as session:
        session.add(DatasetSnapshot(id="f" * 64, path="/nowhere.jsonl", n_examples=12,
                                    stats={"input": 20, "kept": 12, "dropped": {"duplicate": 5, "low_quality": 3},
                                           "categories": {"strings": 7, "math": 5},
                                           "quality": {"scored": {"n": 20,
                                                                  "histogram": [0, 1, 1, 2, 2, 3, 3, 4, 2, 2]}}}))
    report = {"suite": "demo", "suite_digest": "d1", "gate": {"deploy": True, "improvement": 0.5},
              "baseline": [{"task_id": "t1", "passed": False}, {"task_id": "t2", "passed": True}],
              "candidate": [{"task_id": "t1", "passed": True, "status": "passed"},
                            {"task_id": "t2", "passed": True, "status": "passed"}]}
    report3 = {**report, "candidate": [{"task_id": "t1", "passed": False, "status": "failed",
                                        "error": "AssertionError"},
                                       {"task_id": "t2", "passed": True, "status": "passed"}]}
    versions = [add_version(db, tmp_path / "versions", tmp_path / "scratch",
                            metrics={"pass_rate": 0.5, "baseline_pass_rate": 0.4, "train_loss": 1.5}),
                add_version(db, tmp_path / "versions", tmp_path / "scratch", snapshot="f" * 64, eval_report=report,
                            metrics={"pass_rate": 1.0, "baseline_pass_rate": 0.5, "train_loss": 1.1,
                                     "history": [{"iteration": 1, "reward": 0.2, "kl": 0.1},
                                                 {"iteration": 2, "reward": 0.6, "kl": 0.4}]}),
                add_version(db, tmp_path / "versions", tmp_path / "scratch", success=False, eval_report=report3,
                            metrics={"pass_rate": 0.5, "baseline_pass_rate": 1.0, "train_loss": 1.3})]
    with db.session() as session:
        activate(session, versions[0])
        activate(session, versions[1])
        cycle = Cycle(status="committed", model_version_id=versions[1], n_interactions=12)
        session.add(cycle)
        session.flush()
        session.add_all(TrainingMetric(run_id=f"cycle-{cycle.id}", step=s, loss=2.0 / s,
                                       eval_loss=2.2 / s if s % 2 == 0 else None, learning_rate=1e-4)
                        for s in range(1, 11))
        session.add(Alert(kind="loss_spike", message="step 4: loss rose 3x", run_id=f"cycle-{cycle.id}"))
        session.add(EvaluationRun(model_version=versions[1], suite="demo", n_items=2, metrics={"pass_rate": 1.0},
                                  items=[]))
        alice = [record_interaction(session, user="alice", source="api", prompt=f"alice asks for slugify {i}",
                                    code=f"def slugify_{i}(text):\n    return text", explanation="Joins words.",
                                    model_version=versions[0]).id for i in range(30)]
        bob = [record_interaction(session, user="bob", source="api", prompt=f"bob wants a parser {i}",
                                  code="def parse(): pass").id for i in range(5)]
        record_feedback(session, alice[0], rating=4, accepted=True, user="alice")
        record_feedback(session, alice[1], accepted=False, comment="wrong", user="alice")
        jobs = {"queued": scheduler.submit(session, "sleep", {"seconds": 1.0}).id,
                "failed": scheduler.submit(session, "eval", {"limit": 2}).id}
    with db.session() as session:
        scheduler.cancel(session, jobs["failed"])  # cancelled: retryable like a failed one
    return Seeded(keys, alice, bob, versions, jobs)


class Dash:
    """A TestClient that signs in through the form, as a browser does."""

    def __init__(self, client: TestClient, keys: Keys, engine: ParkedEngine, db):
        self.client, self.keys, self.engine, self.db = client, keys, engine, db

    def csrf(self, path: str = "/") -> str:
        page = self.client.get(path)
        found = CSRF.search(page.text)
        assert found, f"no CSRF field on {path}: {page.status_code} {page.text[:300]}"
        return found.group(1)

    def sign_in(self, who: str) -> None:
        self.client.cookies.clear()
        token = self.csrf("/login")
        response = self.client.post("/login", data={"csrf": token, "key": getattr(self.keys, who), "next": "/"},
                                    follow_redirects=False)
        assert response.status_code == 303, response.text

    def post(self, path: str, data: dict | None = None, *, page: str = "/", **kwargs):
        return self.client.post(path, data={"csrf": self.csrf(page), **(data or {})}, follow_redirects=False,
                                **kwargs)


@pytest.fixture
def seeded(dash_db, tmp_path) -> Seeded:
    return seed(dash_db, tmp_path)


@pytest.fixture
def dash(dash_settings, dash_db, seeded):
    from selftrain.serve.app import create_app

    engine = ParkedEngine(dash_db)
    with TestClient(create_app(dash_settings, dash_db, engine=engine)) as client:
        yield Dash(client, seeded.keys, engine, dash_db)

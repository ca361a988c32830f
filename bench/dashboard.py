"""Dashboard pages with 100,000 interactions: milliseconds per page through the ASGI app.

    python bench/dashboard.py [--interactions 100000] [--repeat 15]

Seeds a temporary SQLite workspace (100,000 interactions from 21 users over 60 days,
~40% with feedback, 10 versions with evaluation reports, 10 training runs of 500 steps,
alerts and jobs), signs in through the form as a browser does (httpx via Starlette's
TestClient, in process: no network, no model), then times every page: a warm-up
request, then `--repeat` requests, median and 95th percentile. Then it drops the
indexes the dashboard's migration (0009_dashboard) adds and times the pages again, to
show what they buy. Prints a table; writes JSON to bench/out/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INDEXES = {"ix_interactions_user_id": "interactions", "ix_interactions_created_at": "interactions",
           "ix_interactions_model_version_id": "interactions", "ix_feedback_created_at": "feedback"}
WORDS = ("sorted", "unique", "parse", "slugify", "flatten", "merge", "chunk", "retry", "median", "tokenize")


class ParkedEngine:
    """What the dashboard asks of the engine, without a model."""

    def stats(self) -> dict:
        return {"version": "v0010", "queue_depth": 0, "load_error": None}

    def refresh_version(self) -> None:
        pass


def seed(db, workspace: Path, n: int, rng: random.Random) -> dict:
    from sqlalchemy import insert

    from selftrain.registry import activate, register
    from selftrain.serve.keys import create_key
    from selftrain.store.schema import (Alert, Cycle, DatasetSnapshot, EvaluationRun, Feedback, Interaction, Job,
                                        TrainingMetric)

    now = datetime.now(timezone.utc)
    users = [f"user{i:02d}" for i in range(20)] + ["alice"]
    with db.session() as session:
        admin_key, alice_key = create_key(session, "root", "admin")[1], create_key(session, "alice")[1]
        session.add(DatasetSnapshot(id="s" * 64, path="/none.jsonl", n_examples=900, stats={
            "input": 1000, "kept": 900, "dropped": {"duplicate": 60, "low_quality": 40},
            "categories": {w: 90 for w in WORDS}, "quality": {"scored": {"n": 1000, "histogram": [100] * 10}}}))
    versions = []
    for v in range(10):  # real registrations: the version page verifies their files
        adapter = workspace / "scratch" / f"a{v}"
        adapter.mkdir(parents=True)
        (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
        items = [{"task_id": f"t{i}", "passed": rng.random() < 0.4 + v * 0.04, "status": "passed"} for i in range(40)]
        with db.session() as session:
            versions.append(register(
                session, adapter, workspace / "versions", base_model="tiny",
                parent_id=versions[-1] if versions else None,
                dataset_snapshot_id="s" * 64, training_config={"lora_r": 8, "epochs": 3},
                metrics={"pass_rate": 0.4 + v * 0.04, "baseline_pass_rate": 0.38 + v * 0.04,
                         "train_loss": 1.2 - v * 0.05},
                eval_report={"suite": "demo", "suite_digest": "d", "gate": {"deploy": True}, "candidate": items,
                             "baseline": items}, success=True).id)
            activate(session, versions[-1])
    with db.session() as session:
        cycles = []
        for v in versions:
            cycle = Cycle(status="committed", model_version_id=v, n_interactions=n // 10)
            session.add(cycle)
            session.flush()
            cycles.append(cycle.id)
            session.add_all(TrainingMetric(run_id=f"cycle-{cycle.id}", step=s, loss=2 / (1 + s / 50),
                                           eval_loss=2.1 / (1 + s / 50) if s % 50 == 0 else None, learning_rate=2e-4)
                            for s in range(1, 501))
            session.add(EvaluationRun(model_version=v, suite="demo", n_items=40, metrics={"pass_rate": 0.5}, items=[]))
            session.add(EvaluationRun(model_version=v, suite="demo", n_items=40, metrics={"pass_rate": 0.55}, items=[]))
        session.add_all(Alert(kind=rng.choice(("loss_spike", "nan_loss", "grad_norm")),
                              run_id=f"cycle-{rng.choice(cycles)}",
                              message=f"step {rng.randint(1, 500)}: loss rose 3x its recent mean") for _ in range(30))
        session.add_all(Job(type=rng.choice(("cycle", "eval", "sft")), payload={}, priority=0, attempts=1,
                            max_attempts=3,
                            status=rng.choice(("completed", "failed", "queued", "cancelled"))) for _ in range(200))
    rows, feedback = [], []
    for i in range(1, n + 1):
        word = WORDS[i % len(WORDS)]
        created = now - timedelta(seconds=rng.uniform(0, 60 * 86400))
        version = rng.choice(versions + [None])
        rows.append(dict(id=i, created_at=created, user=rng.choice(users), source="api", kind="code_generation",
                         category=word, prompt=f"Write a Python function `{word}_{i}(items)` that returns the {word} "
                         "of the items, handling empty input and keeping the original order where it matters.",
                         code=f"def {word}_{i}(items):\n    result = []\n    for item in items:\n"
                              "        result.append(item)\n    return result\n",
                         explanation=f"Walks the items once and builds the {word} result.", raw_response="",
                         model_version=version, latency_ms=rng.uniform(50, 900), prompt_tokens=40, completion_tokens=60,
                         consumed_by_cycle=rng.choice(cycles) if i <= n - 250 else None))
        if rng.random() < 0.4:
            accepted = rng.random() < 0.7 if rng.random() < 0.8 else None
            feedback.append(dict(interaction_id=i, created_at=created + timedelta(minutes=5), user=rows[-1]["user"],
                                 rating=rng.randint(1, 5) if rng.random() < 0.5 else None, accepted=accepted,
                                 comment="thanks" if rng.random() < 0.1 else None))
    with db.session() as session:
        for start in range(0, len(rows), 10_000):
            session.execute(insert(Interaction), rows[start:start + 10_000])
        for start in range(0, len(feedback), 10_000):
            session.execute(insert(Feedback), feedback[start:start + 10_000])
    return {"admin": admin_key, "alice": alice_key, "versions": versions, "cycles": cycles, "n_feedback": len(feedback)}


def sign_in(client, key: str) -> None:
    import re

    client.cookies.clear()
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    response = client.post("/login", data={"csrf": token, "key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text


def time_page(client, path: str, repeat: int) -> dict:
    response = client.get(path)  # warm-up (and the check that the page works)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        client.get(path)
        seconds.append(time.perf_counter() - began)
    seconds.sort()
    return {"median_ms": round(1000 * statistics.median(seconds), 1),
            "p95_ms": round(1000 * seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))], 1),
            "kb": round(len(response.content) / 1024, 1)}


def pages(facts: dict) -> list[tuple[str, str, str]]:
    """(name, who, path) for every page, with the heaviest variants of the list."""
    v = facts["versions"]
    return [("overview", "admin", "/"), ("overview (user key)", "alice", "/"),
            ("interactions, newest", "admin", "/interactions"),
            ("interactions, deep page", "admin", "/interactions?before=50000"),
            ("interactions, 100 a page", "admin", "/interactions?size=100"),
            ("interactions, user key", "alice", "/interactions"),
            ("interactions, search (rare)", "admin", "/interactions?q=slugify_4243"),
            ("interactions, search (common)", "admin", "/interactions?q=median"),
            ("interactions, accepted", "admin", "/interactions?feedback=accepted"),
            ("interactions, by version", "admin", f"/interactions?version={v[3]}"),
            ("interaction detail", "admin", "/interactions/4242"),
            ("jobs", "admin", "/jobs"), ("jobs, live rows", "admin", "/jobs/rows"),
            ("versions", "admin", "/versions"), ("version detail", "admin", f"/versions/{v[-1]}"),
            ("compare two versions", "admin", f"/versions/compare?a={v[-2]}&b={v[-1]}"),
            ("training runs", "admin", "/training"),
            ("training run", "admin", f"/training/cycle-{facts['cycles'][-1]}")]


def measure(client, facts: dict, repeat: int) -> dict[str, dict]:
    results, who_now = {}, None
    for name, who, path in pages(facts):
        if who != who_now:
            sign_in(client, facts[who])
            who_now = who
        results[name] = {"who": who, "path": path, **time_page(client, path, repeat)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dashboard.json")
    args = parser.parse_args()

    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from selftrain.config import load_settings
    from selftrain.serve.app import create_app
    from selftrain.store.db import Database

    with tempfile.TemporaryDirectory(prefix="selftrain-bench-dashboard-") as tmp:
        workspace = Path(tmp)
        (workspace / "selftrain.toml").write_text('base_model = "tiny"\n', encoding="utf-8")
        settings = load_settings(workspace, env={})
        db = Database(settings.resolved_database_url)
        began = time.perf_counter()
        facts = seed(db, workspace, args.interactions, random.Random(0))
        seeded_s = time.perf_counter() - began
        print(f"seeded {args.interactions:,} interactions and {facts['n_feedback']:,} feedback rows "
              f"in {seeded_s:.1f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
        with TestClient(create_app(settings, db, engine=ParkedEngine())) as client:
            indexed = measure(client, facts, args.repeat)
            with db.engine.begin() as connection:
                for name in INDEXES:
                    connection.execute(text(f"DROP INDEX {name}"))
            bare = measure(client, facts, max(3, args.repeat // 3))
        db.close()

    print(f"\n| page | who | ms median | ms p95 | KiB | ms median without 0009's indexes |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in indexed.items():
        print(f"| {name} | {r['who']} | {r['median_ms']} | {r['p95_ms']} | {r['kb']} | {bare[name]['median_ms']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "interactions": args.interactions, "feedback": facts["n_feedback"], "repeat": args.repeat,
        "backend": "sqlite", "load_average_1m": round(os.getloadavg()[0], 2), "seed_seconds": round(seeded_s, 1),
        "pages": [{"page": name, **r, "median_ms_without_indexes": bare[name]["median_ms"]}
                  for name, r in indexed.items()]}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

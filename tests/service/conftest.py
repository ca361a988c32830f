"""Fixtures for the service tests: databases on both backends, versions without training,
and the service commands run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from selftrain.store.db import Database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    """The same tests on SQLite and, in the postgres tier, on the real server."""
    url = f"sqlite:///{tmp_path / 'service.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    yield database
    database.close()


@pytest.fixture
def light_workspace(tmp_path, monkeypatch) -> Path:
    """A workspace for jobs that need no model (the tiny one takes seconds to build)."""
    for key in list(os.environ):
        if key.startswith("SELFTRAIN_"):
            monkeypatch.delenv(key)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "selftrain.toml").write_text("learning_threshold = 5\n", encoding="utf-8")
    return ws


def add_version(db, tmp_path, *, success=True, metrics=None, eval_report=None, parent=None,
                content="weights"):
    """Register a version whose 'adapter' is two small files (no training)."""
    from selftrain.registry import register

    adapter = tmp_path / f"adapter-{uuid.uuid4().hex[:8]}"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_text(content)
    (adapter / "adapter_config.json").write_text("{}")
    with db.session() as s:
        return register(s, adapter, tmp_path / "versions", base_model="tiny", parent_id=parent,
                        dataset_snapshot_id=None, training_config={"lr": 1},
                        metrics=metrics or {"pass_rate": 0.5}, eval_report=eval_report or {},
                        success=success).id


def service_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTRAIN_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def service_command(workspace: Path, *args: str) -> list[str]:
    """`python -m selftrain.cli_service --workspace WS ...` (the commands cli.py mounts)."""
    return [sys.executable, "-m", "selftrain.cli_service", "--workspace", str(workspace), *args]


def run_service(workspace: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(service_command(workspace, *args), capture_output=True, text=True,
                          env=service_env(), timeout=timeout, cwd=REPO)


def start_service(workspace: Path, *args: str, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(service_command(workspace, *args), stdout=out, stderr=subprocess.STDOUT,
                            env=service_env(), cwd=REPO)


def write_cycle_data(ws: Path, n: int = 8) -> Path:
    """Interactions (6 usable, 2 rejected) and a 6-problem suite, as tests/test_cycle.py
    writes them; the suite is added to the workspace's settings."""
    rows = [{"id": f"t-{i}", "user": "alice", "category": "math",
             "prompt": f"Write a Python function `add_{i}(x: int) -> int` that returns x + {i}.",
             "entry_point": f"add_{i}",
             "response": {"code": f"def add_{i}(x: int) -> int:\n    return x + {i}", "explanation": f"Adds {i}."},
             "tests": f"assert add_{i}(1) == {1 + i}",
             "feedback": {"accepted": i % 4 != 3, "rating": 5 if i % 4 != 3 else 1}} for i in range(n)]
    path = ws / "interactions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = ws / "suite.jsonl"
    suite.write_text("\n".join(json.dumps({
        "task_id": f"e{i}", "prompt": f"Write `twice_{i}(x)` returning 2 * x.", "entry_point": f"twice_{i}",
        "tests": f"assert twice_{i}(3) == 6"}) for i in range(6)) + "\n")
    with open(ws / "selftrain.toml", "a") as fh:
        fh.write(f'eval_suite = "{suite}"\n')
    return path

"""`selftrain simulate`: the corpus split, the simulated user, and the whole plumbing on a
tiny model (a few tasks, through the real API, real cycles, real sandbox)."""

from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import func, select

from selftrain.errors import SelftrainError
from selftrain.simulate import (ACME_TASKS, SimulationConfig, Task, load_tasks, split_heldout, stream_rounds,
                                user_feedback)


def task(i: int, split: str, convention: str = "c") -> dict:
    name = f"f{i}"
    return {"task_id": f"t{i:03d}", "convention": convention, "prompt": f"Write `{name}()` that returns {i}.",
            "entry_point": name, "reference": f'def {name}() -> int:\n    """The number {i}, as the tests expect."""\n    return {i}\n',
            "tests": f"assert {name}() == {i}", "split": split}


def write_corpus(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_bundled_corpus_splits_by_task_with_no_function_in_both():
    tasks = load_tasks(ACME_TASKS)
    train = [t for t in tasks if t.split == "train"]
    heldout = [t for t in tasks if t.split == "heldout"]
    assert len(tasks) >= 300 and len(train) > len(heldout) > 0
    assert not {t.entry_point for t in train} & {t.entry_point for t in heldout}
    gate, test = split_heldout(heldout, 0.5, seed=0)
    assert sorted(t.task_id for t in gate + test) == sorted(t.task_id for t in heldout)
    assert not {t.task_id for t in gate} & {t.task_id for t in test}
    # Both halves cover every convention, and the split does not depend on the file's order.
    assert {t.convention for t in gate} == {t.convention for t in test} == {t.convention for t in heldout}
    assert abs(len(gate) - len(heldout) / 2) <= 1
    assert split_heldout(list(reversed(heldout)), 0.5, seed=0) == (gate, test)
    assert split_heldout(heldout, 0.5, seed=1) != (gate, test)


def test_stream_takes_the_training_split_in_turn_and_starts_over():
    train = [Task(**{k: v for k, v in task(i, "train").items()}) for i in range(10)]
    rounds = stream_rounds(train, cycles=3, per_cycle=4, seed=0)
    assert [len(r) for r in rounds] == [4, 4, 4]
    flat = [t.task_id for r in rounds for t in r]
    assert sorted(set(flat[:10])) == sorted(t.task_id for t in train)  # every task before any repeat
    assert flat[10:] == flat[:2]
    assert [len(r) for r in stream_rounds(train, cycles=3, per_cycle=0, seed=0)] == [3, 3, 3]


def test_user_accepts_passes_and_corrects_the_configured_share_of_failures():
    t = Task(**task(1, "train"))
    passed = user_feedback(t, True, random.Random(0), correction_share=1.0, rating_share=1.0)
    assert passed.accepted and passed.corrected_code is None and passed.rating in (4, 5)
    failed = user_feedback(t, False, random.Random(0), correction_share=1.0, rating_share=0.0)
    assert failed.body() == {"accepted": False, "corrected_code": t.reference}
    rng = random.Random(0)
    corrected = sum(user_feedback(t, False, rng, correction_share=0.3, rating_share=0.0).corrected_code is not None
                    for _ in range(2000))
    assert 0.26 < corrected / 2000 < 0.34
    assert user_feedback(t, False, random.Random(0), correction_share=0.0, rating_share=0.0).corrected_code is None


def test_corpus_errors_are_one_sentence(tmp_path):
    both = write_corpus(tmp_path / "both.jsonl", [task(1, "train"), {**task(2, "heldout"), "entry_point": "f1"},
                                                   task(3, "heldout")])
    with pytest.raises(SelftrainError, match="in both splits"):
        load_tasks(both)
    bad = write_corpus(tmp_path / "bad.jsonl", [task(1, "train"), {**task(2, "heldout"), "split": "test"}])
    with pytest.raises(SelftrainError, match="line 2: split must be"):
        load_tasks(bad)
    with pytest.raises(SelftrainError, match="Could not read the task corpus"):
        load_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(SelftrainError, match="'gate_share' must be strictly between 0 and 1"):
        SimulationConfig(gate_share=1.0).check()


def test_simulation_logs_feedback_runs_cycles_and_reports(workspace, tmp_path):
    """The plumbing, end to end on the tiny model: two cycles of four tasks each."""
    from selftrain.config import load_settings
    from selftrain.simulate import SIMULATED_USER, simulate
    from selftrain.store.db import Database
    from selftrain.store.schema import Cycle, Feedback, Interaction

    rows = [task(i, "train", f"c{i % 2}") for i in range(8)] + [task(i, "heldout", f"c{i % 2}") for i in range(8, 12)]
    corpus = write_corpus(tmp_path / "tasks.jsonl", rows)
    settings = load_settings(workspace)
    db = Database(settings.resolved_database_url)
    out = tmp_path / "report"
    config = SimulationConfig(cycles=2, tasks_per_cycle=4, correction_share=1.0, rating_share=1.0,
                              humaneval_limit=2, concurrency=3, tasks_path=corpus)
    report = simulate(settings, db, config, out)

    with db.session() as session:
        interactions = session.scalars(select(Interaction).order_by(Interaction.id)).all()
        feedback = session.scalars(select(Feedback)).all()
        cycles = session.scalars(select(Cycle).order_by(Cycle.id)).all()
    # Every answer went through the API under the simulated user's key and was rated.
    assert len(interactions) == 8
    assert {i.user for i in interactions} == {SIMULATED_USER} and {i.source for i in interactions} == {"api"}
    assert all(i.tests for i in interactions)
    assert len(feedback) == 8 and all(f.rating is not None for f in feedback)
    references = {r["prompt"]: r["reference"] for r in rows}
    by_id = {i.id: i for i in interactions}
    for f in feedback:  # the tiny model passes nothing: every answer rejected and corrected
        assert f.accepted is False and f.corrected_code == references[by_id[f.interaction_id].prompt]
    # Two cycles, each on its own four interactions: nothing consumed twice.
    assert [c.status for c in cycles] == ["committed", "committed"]
    assert [c.n_interactions for c in cycles] == [4, 4]
    assert [sum(i.consumed_by_cycle == c.id for i in interactions) for c in cycles] == [4, 4]
    # Held-out tasks never reached the stream.
    heldout_prompts = {r["prompt"] for r in rows if r["split"] == "heldout"}
    assert not heldout_prompts & {i.prompt for i in interactions}

    assert [c.cycle for c in report.cycles] == [1, 2]
    assert report.n_gate_tasks + report.n_test_tasks == 4
    data = json.loads((out / "simulation.json").read_text())
    assert data["base"]["heldout"]["n"] == report.n_test_tasks
    assert data["base"]["humaneval"]["n"] == 2
    for c in data["cycles"]:
        assert c["round"]["sent"] == 4 and c["round"]["corrected"] == 4
        assert c["heldout"]["n"] == report.n_test_tasks and 0 <= c["heldout"]["mcnemar_p"] <= 1
        assert c["n_examples"] > 0 and c["train_steps"] > 0
    assert "| cycle 2 |" in (out / "simulation.md").read_text()
    assert (out / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    db.close()


def test_cli_simulate_rejects_bad_options_in_one_sentence(workspace):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTRAIN_")}
    proc = subprocess.run([sys.executable, "-m", "selftrain.cli", "--workspace", str(workspace), "simulate",
                           "--gate-share", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "'gate_share' must be strictly between 0 and 1" in proc.stderr + proc.stdout

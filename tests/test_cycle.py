"""One real cycle end to end on the tiny model: ingest → curate → train → evaluate in the
sandbox → gate → register → consume; and the guarantees when it fails."""

import json

from dataclasses import replace

import pytest
from sqlalchemy import select

from selftrain.config import load_settings
from selftrain.errors import SelftrainError
from selftrain.evaluation.sandbox import ExecutionResult
from selftrain.loop import ingest_file, interaction_count, run_cycle
from selftrain.store.db import Database
from selftrain.store.schema import Cycle, EvaluationRun, ModelVersion, TrainingMetric


def write_data(ws, n=8, first=0):
    rows = []
    for i in range(first, first + n):
        rows.append({"id": f"t-{i}", "user": "alice", "category": "math",
                     "prompt": f"Write a Python function `add_{i}(x: int) -> int` that returns x + {i}.",
                     "entry_point": f"add_{i}",
                     "response": {"code": f"def add_{i}(x: int) -> int:\n    return x + {i}",
                                  "explanation": f"Adds {i}."},
                     "tests": f"assert add_{i}(1) == {1 + i}",
                     "feedback": {"accepted": i % 4 != 3, "rating": 5 if i % 4 != 3 else 1}})
    path = ws / f"interactions-{first}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = ws / "suite.jsonl"
    suite.write_text("\n".join(json.dumps({
        "task_id": f"e{i}", "prompt": f"Write `twice_{i}(x)` returning 2 * x.", "entry_point": f"twice_{i}",
        "tests": f"assert twice_{i}(3) == 6"}) for i in range(6)) + "\n")
    with open(ws / "selftrain.toml", "a") as fh:
        fh.write(f'eval_suite = "{suite}"\n')
    return path


class ScriptedSandbox:
    """A real sandbox stand-in whose verdicts are fixed per call: the first `run_many`
    (the baseline) fails everything, the second (the candidate) passes everything.
    Six problems all flipping gives exact McNemar p = 2 * 0.5**6 = 0.031 < 0.05."""

    def __init__(self):
        self.calls = 0

    def run_many(self, items):
        self.calls += 1
        ok = self.calls == 2
        return [ExecutionResult("passed" if ok else "failed", ok, 0, "", "", 0.0) for _ in items]


def test_cycle_end_to_end_with_the_real_sandbox(workspace):
    path = write_data(workspace)
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    assert ingest_file(db, path) == (8, 0)
    assert ingest_file(db, path) == (0, 8)  # idempotent: ids already present
    stages = []
    report = run_cycle(settings, db, progress=lambda stage, done, total: stages.append(stage))

    assert report.status == "committed" and report.n_interactions == 8
    assert report.n_examples == 6 and report.curation["dropped"] == {"rejected": 2}
    assert {"train", "evaluate baseline", "evaluate candidate"} <= set(stages)
    # A tiny random model passes nothing: the gate must keep the base model in service.
    assert report.baseline_pass_rate == 0.0 and report.candidate_pass_rate == 0.0
    assert not report.deployed and report.gate["test"] == "mcnemar_exact"
    with db.session() as s:
        version = s.get(ModelVersion, report.version_id)
        assert version is not None and not version.is_active and not version.success
        assert version.eval_report["gate"]["deploy"] is False
        assert len(s.scalars(select(EvaluationRun)).all()) == 2
        assert s.scalars(select(TrainingMetric)).first() is not None
    assert interaction_count(db) == (8, 0)

    again = run_cycle(settings, db)  # nothing new: skipped, nothing registered
    assert again.status == "skipped" and again.n_interactions == 0


def test_a_passing_candidate_is_activated(workspace):
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, write_data(workspace))
    settings = load_settings(workspace, env={})
    report = run_cycle(settings, db, sandbox=ScriptedSandbox())
    assert report.deployed and report.candidate_pass_rate == 1.0
    with db.session() as s:
        assert s.get(ModelVersion, report.version_id).is_active


def test_a_failed_cycle_registers_nothing_and_consumes_nothing(workspace, monkeypatch):
    path = write_data(workspace)
    settings = load_settings(workspace, env={"SELFTRAIN_LORA_TARGET_MODULES": "no_such_layer"})
    db = Database(settings.resolved_database_url)
    ingest_file(db, path)
    with pytest.raises(SelftrainError, match="no_such_layer do not exist"):
        run_cycle(settings, db)
    with db.session() as s:
        assert s.scalars(select(ModelVersion)).all() == []
        (cycle,) = s.scalars(select(Cycle)).all()
        assert cycle.status == "failed" and "no_such_layer" in cycle.error
    assert interaction_count(db) == (8, 8)
    assert not any((settings.artifacts_dir / "tmp").glob("*"))


def test_feedback_of_a_cycle_that_failed_the_gate_is_learned_from_again(workspace):
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, write_data(workspace))
    first = run_cycle(settings, db)  # the tiny model passes nothing: not deployed
    assert not first.deployed and first.carried_over == 0
    ingest_file(db, write_data(workspace, n=4, first=8))
    # Scripted verdicts differ from the first cycle's real ones: evaluate the baseline again.
    second = run_cycle(replace(settings, evaluation_cache=False), db, sandbox=ScriptedSandbox())
    # It consumes only its own 4, but curates them together with the first cycle's 8.
    assert second.n_interactions == 4 and second.carried_over == 8 and second.carried_from == [first.cycle_id]
    assert second.curation["input"] == 12 and second.deployed
    with db.session() as s:
        from selftrain.store.schema import Interaction

        consumed = [i.consumed_by_cycle for i in s.scalars(select(Interaction).order_by(Interaction.id))]
    assert consumed == [first.cycle_id] * 8 + [second.cycle_id] * 4
    # The version in service now holds what both taught: nothing is carried past it.
    ingest_file(db, write_data(workspace, n=4, first=12))
    third = run_cycle(settings, db)
    assert third.carried_over == 0 and third.curation["input"] == 4


def test_carry_over_can_be_turned_off(workspace):
    settings = load_settings(workspace, env={"SELFTRAIN_CARRY_OVER_CYCLES": "0"})
    db = Database(settings.resolved_database_url)
    ingest_file(db, write_data(workspace))
    run_cycle(settings, db)
    ingest_file(db, write_data(workspace, n=4, first=8))
    second = run_cycle(settings, db)
    assert second.carried_over == 0 and second.curation["input"] == 4


def test_too_few_examples_skips_without_consuming(workspace):
    path = write_data(workspace, n=3)
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, path)
    report = run_cycle(settings, db)
    assert report.status == "skipped" and "needs 4 (min_examples)" in report.message
    assert interaction_count(db) == (3, 3)


def test_bad_ingest_file_stores_nothing(workspace):
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    bad = workspace / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": {"code": "x = 1"}}\n{"prompt": "b", "feedback": []}\n')
    with pytest.raises(SelftrainError, match="line 2: field 'feedback' must be an object"):
        ingest_file(db, bad)
    assert interaction_count(db) == (0, 0)


class ExplodingSandbox:
    def run_many(self, items):
        raise RuntimeError("sandbox exploded")


def test_a_cycle_failing_after_training_leaves_no_version_folder(workspace):
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, write_data(workspace))
    with pytest.raises(RuntimeError, match="sandbox exploded"):
        run_cycle(settings, db, sandbox=ExplodingSandbox())
    with db.session() as s:
        assert s.scalars(select(ModelVersion)).all() == []
        assert s.scalars(select(Cycle)).one().error == "RuntimeError: sandbox exploded"
    assert interaction_count(db) == (8, 8)
    assert not any((settings.artifacts_dir / "tmp").glob("*"))
    assert not (settings.artifacts_dir / "versions").exists() or not any((settings.artifacts_dir / "versions").iterdir())


def test_rl_after_sft_aligns_the_candidate_when_there_is_feedback_enough(workspace):
    """cycle_rl = "dpo": the gate judges the DPO adapter trained from the cycle's SFT
    adapter; with too few preference pairs the cycle says why and gates the SFT adapter."""
    from selftrain.store.schema import PreferencePair

    ingest_file(Database(load_settings(workspace, env={}).resolved_database_url), write_data(workspace))
    settings = replace(load_settings(workspace, env={}), cycle_rl="dpo", rl_min_pairs=4)
    db = Database(settings.resolved_database_url)
    first = run_cycle(settings, db)
    assert first.status == "committed" and first.rl == {
        "method": "dpo", "skipped": "DPO needs at least 4 preference pairs with different answers; there are 0."}
    with db.session() as s:
        assert "rl" not in s.get(ModelVersion, first.version_id).training_config

    with db.session() as s:
        s.add_all(PreferencePair(prompt=f"Write `inc_{i}(x)` returning x + 1.", chosen=f"def inc_{i}(x):\n    return x + 1",
                                 rejected=f"def inc_{i}(x):\n    return x", source="api") for i in range(6))
    ingest_file(db, write_data(workspace, n=8, first=8))
    second = run_cycle(settings, db)
    assert second.status == "committed" and second.rl["method"] == "dpo"
    assert second.rl["metrics"]["train_seconds"] > 0 and "rl" in second.seconds
    with db.session() as s:
        version = s.get(ModelVersion, second.version_id)
        assert version.training_config["rl"]["method"] == "dpo"
        assert version.training_config["rl"]["min_pairs"] == 4

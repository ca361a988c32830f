"""What the job types do, run in-process on the tiny model: an SFT job on a stored
snapshot registers an ungated version; an eval job stores an evaluation run."""

import pytest
from sqlalchemy import select

from selftrain.config import load_settings
from selftrain.data.curate import curate_interactions, write_snapshot
from selftrain.errors import SelftrainError
from selftrain.jobs import run_job
from selftrain.loop import ingest_file
from selftrain.scheduler import cancel, claim, submit
from selftrain.store.db import Database
from selftrain.store.records import summarize_feedback, unconsumed_interactions
from selftrain.store.schema import DatasetSnapshot, EvaluationRun, ModelVersion

from .conftest import write_cycle_data


def stored_snapshot(workspace):
    """(settings, db, digest): the cycle data ingested, curated and stored as a snapshot."""
    path = write_cycle_data(workspace)
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, path)
    with db.session() as s:
        items = [(i, summarize_feedback(i.feedback)) for i in unconsumed_interactions(s)]
        examples = curate_interactions(items).examples
        digest, snapshot = write_snapshot(examples, settings.artifacts_dir / "datasets")
        s.add(DatasetSnapshot(id=digest, path=str(snapshot), n_examples=len(examples), stats={}))
    return settings, db, digest


def test_sft_and_eval_jobs(workspace):
    settings, db, digest = stored_snapshot(workspace)
    with db.session() as s:
        submit(s, "sft", {"snapshot": digest, "epochs": 1, "learning_rate": 1e-3})
        submit(s, "eval", {"version": "v0001", "limit": 2})
        submit(s, "sft", {"snapshot": "nope"})

    result = run_job(settings, db, claim(db, "w", lease_s=60))
    assert result["version"] == "v0001" and result["steps"] > 0
    with db.session() as s:
        version = s.get(ModelVersion, "v0001")
        assert not version.success and version.dataset_snapshot_id == digest
        assert version.training_config["learning_rate"] == 1e-3

    result = run_job(settings, db, claim(db, "w", lease_s=60))
    assert result["version"] == "v0001" and result["n"] == 2 and result["pass_rate"] == 0.0
    with db.session() as s:
        (run,) = s.scalars(select(EvaluationRun)).all()
        assert run.model_version == "v0001" and run.n_items == 2

    with pytest.raises(SelftrainError, match="There is no dataset snapshot 'nope'"):
        run_job(settings, db, claim(db, "w", lease_s=60))


def test_a_job_whose_claim_was_lost_commits_nothing(workspace):
    """The fence: an SFT job cancelled while it trained registers no version."""
    settings, db, digest = stored_snapshot(workspace)
    with db.session() as s:
        job_id = submit(s, "sft", {"snapshot": digest}).id
    held = claim(db, "w", lease_s=60)
    with db.session() as s:
        cancel(s, job_id)
    with pytest.raises(SelftrainError, match=f"Job {job_id} is no longer held by this worker"):
        run_job(settings, db, held)
    with db.session() as s:
        assert s.scalars(select(ModelVersion)).all() == []
    versions = settings.artifacts_dir / "versions"
    assert not versions.exists() or not any(versions.iterdir())


def test_rl_job_trains_ppo_then_goes_through_the_gate(workspace):
    """PPO from the adapter in service on the stored prompts, judged like a cycle's candidate:
    registered with both evaluations and its per-iteration history, not activated (the tiny
    model passes nothing)."""
    path = write_cycle_data(workspace)
    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    ingest_file(db, path)
    with db.session() as s:
        submit(s, "rl", {"method": "ppo", "iterations": 1, "batch_size": 2, "max_new_tokens": 8})
    result = run_job(settings, db, claim(db, "w", lease_s=60))
    assert result["method"] == "ppo" and result["deployed"] is False
    assert result["baseline_pass_rate"] == 0.0 and result["candidate_pass_rate"] == 0.0
    with db.session() as s:
        version = s.get(ModelVersion, result["version"])
        assert not version.success and not version.is_active
        assert version.training_config["method"] == "ppo" and version.training_config["iterations"] == 1
        assert len(version.metrics["history"]) == 1 and "kl" in version.metrics["history"][0]
        assert version.eval_report["gate"]["deploy"] is False
        assert sorted(r.model_version or "base" for r in s.scalars(select(EvaluationRun))) == ["base", version.id]
    assert not any((settings.artifacts_dir / "tmp").glob("rl-*"))


def test_rl_jobs_without_data_fail_with_a_sentence(light_workspace):
    settings = load_settings(light_workspace, env={})
    db = Database(settings.resolved_database_url)
    with db.session() as s:
        submit(s, "rl", {"method": "dpo"})
        submit(s, "rl", {"method": "ppo"})
    with pytest.raises(SelftrainError, match="DPO needs at least 8 preference pairs with different answers; there are 0"):
        run_job(settings, db, claim(db, "w", lease_s=60))
    with pytest.raises(SelftrainError, match="PPO needs stored interactions to draw prompts from; there are none"):
        run_job(settings, db, claim(db, "w", lease_s=60))
    with db.session() as s:
        assert s.scalars(select(ModelVersion)).all() == []


def test_a_running_job_reports_its_progress_while_held(light_workspace):
    from selftrain.jobs import progress_reporter
    from selftrain.store.schema import Job

    settings = load_settings(light_workspace, env={})
    db = Database(settings.resolved_database_url)
    with db.session() as s:
        job_id = submit(s, "cycle", {}).id
    held = claim(db, "w", lease_s=60)
    report = progress_reporter(db, held, every_s=60)

    def shown():
        with db.session() as s:
            return (s.get(Job, job_id).result or {}).get("progress")

    report("train", 0, 10)
    assert shown() == {"stage": "train", "done": 0, "total": 10}
    report("train", 5, 10)  # within every_s of the last write: skipped
    assert shown()["done"] == 0
    report("train", 10, 10)  # a stage's end is always written
    assert shown() == {"stage": "train", "done": 10, "total": 10}
    with db.session() as s:
        cancel(s, job_id)
    report("evaluate baseline", 0, 6)  # the claim is gone: the row is left alone
    assert shown()["stage"] == "train"

"""What each job type does: one `match` from a claimed job to the room that does the work.

`selftrain.worker` decides where and how a job runs (its own process, a lease, a
heartbeat); this module decides what running it means. A job's result is a small JSON
object stored on its row. Every runner that commits something checks `fence` inside its
commit transaction, so a job whose claim was lost (cancelled, or requeued after its
lease expired) never commits.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict

from selftrain.config import Settings
from selftrain.errors import SelftrainError
from selftrain.scheduler import Claim, assert_held
from selftrain.store.db import Database


def run_job(settings: Settings, db: Database, claim: Claim) -> dict:
    def fence(session) -> None:
        assert_held(session, claim)

    payload = claim.payload
    match claim.type:
        case "cycle":
            from selftrain.loop import json_safe, run_cycle

            report = run_cycle(settings, db, fence=fence, owner={"job": claim.job_id, "token": claim.token},
                               progress=progress_reporter(db, claim))
            summary = asdict(report)
            summary.pop("curation", None)  # the cycle row keeps the full report
            return json_safe(summary)
        case "eval":
            return evaluate_version(settings, db, payload.get("version", "active"),
                                    suite=payload.get("suite"), limit=payload.get("limit"))
        case "sft":
            return train_on_snapshot(settings, db, payload, fence=fence)
        case "rl":
            return train_rl(settings, db, payload, fence=fence)
        case "hpo":
            from selftrain.training import hpo

            return hpo.run_job(settings, db, payload)
        case "sleep":
            return sleep_job(settings, claim)
        case _:
            raise SelftrainError(f"This worker does not know how to run {claim.type!r} jobs; "
                                 "upgrade it to the version that submitted them.")


def evaluate_version(settings: Settings, db: Database, version: str | None = "active", *,
                     suite: str | None = None, limit: int | None = None, sandbox=None) -> dict:
    """Evaluate a version ('active', 'base' or an id) on a suite in the sandbox and store
    the run; returns its metrics."""
    from selftrain.evaluation.harness import evaluate_model
    from selftrain.evaluation.suites import load_suite
    from selftrain.loop import make_sandbox
    from selftrain.models.base import load_model, resolve_base_model
    from selftrain.registry import active_version, get_version, verify
    from selftrain.store.schema import EvaluationRun

    loaded = load_suite(suite or settings.eval_suite, settings.eval_limit if limit is None else limit)
    with db.session() as session:
        if version in (None, "base"):
            row = None
        elif version == "active":
            row = active_version(session)
        else:
            row = get_version(session, version)
        if row is not None and (broken := verify(row)):
            raise SelftrainError(f"Version {row.id} is corrupted or pruned ({', '.join(broken)}); "
                                 "it cannot be evaluated.")
        version_id, adapter = (row.id, row.adapter_path) if row else (None, None)
    location = resolve_base_model(settings.base_model, settings.model_cache_dir, settings.allow_model_downloads)
    model, tokenizer = load_model(location, settings.dtype, adapter=adapter)
    outcome = evaluate_model(model, tokenizer, loaded, sandbox or make_sandbox(settings),
                             prompt_format=settings.prompt_format, max_new_tokens=settings.max_new_tokens,
                             batch_size=settings.generation_batch_size)
    with db.session() as session:
        run = EvaluationRun(model_version=version_id, suite=loaded.name, n_items=len(outcome.items),
                            metrics=outcome.metrics(), items=outcome.to_json())
        session.add(run)
        session.flush()
        run_id = run.id
    return {"evaluation_run": run_id, "version": version_id, "suite": loaded.name, **outcome.metrics()}


def train_on_snapshot(settings: Settings, db: Database, payload: dict, *, fence=None) -> dict:
    """LoRA SFT on a stored dataset snapshot, continuing the active adapter; the adapter is
    registered as a version that has not been through the gate (it cannot be activated
    until a cycle judges one)."""
    import shutil

    from selftrain.data.curate import read_snapshot
    from selftrain.models.base import resolve_base_model
    from selftrain.registry import active_version, register
    from selftrain.store.schema import DatasetSnapshot, TrainingMetric
    from selftrain.training import sft

    overrides = {k: v for k, v in payload.items() if k != "snapshot"}
    settings = dataclasses.replace(settings, **overrides)
    with db.session() as session:
        snapshot = session.get(DatasetSnapshot, payload["snapshot"])
        if snapshot is None:
            raise SelftrainError(f"There is no dataset snapshot {payload['snapshot']!r}.")
        path = snapshot.path
        active = active_version(session)
        parent, init_adapter = (active.id, active.adapter_path) if active else (None, None)
    examples = read_snapshot(path)
    location = resolve_base_model(settings.base_model, settings.model_cache_dir, settings.allow_model_downloads)
    config = sft.SFTConfig.from_settings(settings)
    work = settings.artifacts_dir / "tmp" / f"sft-{os.getpid()}-{int(time.time())}"
    steps: list[dict] = []
    try:
        result = sft.run(config, examples, location, work / "adapter", init_adapter=init_adapter,
                         on_step=steps.append, on_alert=lambda kind, message, step: _alert(db, kind, message, step),
                         checkpoint_dir=settings.artifacts_dir / "checkpoints" / f"{payload['snapshot'][:16]}-{parent or 'base'}-sft")
        with db.session() as session:
            version = register(session, result.adapter_dir, settings.artifacts_dir / "versions",
                               base_model=settings.base_model, parent_id=parent,
                               dataset_snapshot_id=payload["snapshot"],
                               training_config={**asdict(config), "target_modules": result.target_modules},
                               metrics={"train_loss": result.train_loss, "eval_loss": result.eval_loss,
                                        "train_steps": result.steps, "train_seconds": result.seconds},
                               eval_report={}, success=False)
            try:
                if fence:
                    fence(session)
                session.add_all(TrainingMetric(run_id=version.id, step=s["step"], loss=s.get("loss"),
                                               eval_loss=s.get("eval_loss"),
                                               learning_rate=s.get("learning_rate"),
                                               tokens_per_s=s.get("tokens_per_s")) for s in steps)
                session.flush()
            except BaseException:
                shutil.rmtree(version.adapter_path, ignore_errors=True)
                raise
            version_id = version.id
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"version": version_id, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
            "steps": result.steps}


def progress_reporter(db: Database, claim: Claim, every_s: float = 2.0):
    """A `progress(stage, done, total)` callback that keeps `{"progress": {stage, done,
    total}}` on the job's row while this claim holds it (the dashboard draws it), written at
    most every `every_s` seconds and whenever a stage starts or ends; the job's final result
    replaces it."""
    from sqlalchemy import update

    from selftrain.store.schema import Job

    last = {"at": 0.0, "stage": None}

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == last["stage"] and 0 < done < total and now - last["at"] < every_s:
            return
        last.update(at=now, stage=stage)
        with db.session() as session:
            session.execute(update(Job).where(Job.id == claim.job_id, Job.worker == claim.token,
                                              Job.status == "running")
                            .values(result={"progress": {"stage": stage, "done": done, "total": total}}))

    return report


def train_rl(settings: Settings, db: Database, payload: dict, *, fence=None) -> dict:
    """PPO (execution reward on the stored prompts and their tests) or DPO (on the stored
    preference pairs), continuing the adapter in service; the candidate then goes through
    the same gate as a cycle's (gating.py): registered always, activated only if it is
    better by the margin and significantly so."""
    import shutil

    from selftrain.agent import active_version_ref
    from selftrain.evaluation.suites import load_suite
    from selftrain.gating import judge, record_candidate
    from selftrain.loop import make_sandbox
    from selftrain.models.base import resolve_base_model
    from selftrain.reinforce import align, feedback_for, shortfall

    method = payload.get("method", "ppo")
    pairs, tasks = feedback_for(db, method)  # the data first: a job without any fails in a moment
    missing = shortfall(method, pairs, tasks, settings.rl_min_pairs)
    if missing:
        raise SelftrainError(missing)
    suite = load_suite(settings.eval_suite, settings.eval_limit)  # a bad suite fails before training
    sandbox = make_sandbox(settings)
    baseline_id, baseline_adapter = active_version_ref(db)
    location = resolve_base_model(settings.base_model, settings.model_cache_dir, settings.allow_model_downloads)
    work = settings.artifacts_dir / "tmp" / f"rl-{os.getpid()}-{int(time.time())}"
    registered: list[str] = []
    try:
        aligned = align(settings, method, location, baseline_adapter, work / "adapter", pairs=pairs, tasks=tasks,
                        sandbox=sandbox, options=payload)
        verdict = judge(settings, location, suite, sandbox, baseline_adapter, str(aligned.adapter_dir))
        with db.session() as session:
            version = record_candidate(session, settings, suite, aligned.adapter_dir, verdict, baseline_id=baseline_id,
                                       training_config=aligned.config,
                                       metrics={**aligned.metrics, "history": aligned.history}, reason="rl",
                                       registered=registered, fence=fence)
            version_id = version.id
    except BaseException:
        for path in registered:  # the version row rolled back with the transaction
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    decision = verdict.decision
    return {"version": version_id, "method": method, "deployed": decision.deploy,
            "baseline_pass_rate": verdict.baseline.pass_rate, "candidate_pass_rate": verdict.candidate.pass_rate,
            "p_value": decision.p_value, "reasons": list(decision.reasons)}


def _alert(db: Database, kind: str, message: str, step: int) -> None:
    from selftrain.store.schema import Alert

    with db.session() as session:
        session.add(Alert(kind=kind, message=f"step {step}: {message}", run_id="sft-job"))


def sleep_job(settings: Settings, claim: Claim) -> dict:
    """Diagnostic job: sleep, optionally fail. Every start and finish is appended to
    `artifacts/diagnostics/sleep.log` ("start|end JOB ATTEMPT PID"), which is how the
    tests count executions."""
    log = settings.artifacts_dir / "diagnostics" / "sleep.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    def note(event: str) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {claim.job_id} {claim.attempt} {os.getpid()} {time.time():.3f}\n".encode())
        finally:
            os.close(fd)

    note("start")
    time.sleep(float(claim.payload.get("seconds", 0)))
    if claim.payload.get("fail"):
        raise SelftrainError(f"Sleep job {claim.job_id} failed on purpose (payload 'fail').")
    note("end")
    return {"slept": float(claim.payload.get("seconds", 0)), "pid": os.getpid()}

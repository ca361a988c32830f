"""The continuous-learning loop: one cycle, and recovery from crashes.

This is the only module that wires data → training → evaluation → registry. A cycle:
take unconsumed interactions with their feedback → curate → snapshot → LoRA SFT →
evaluate the model in service and the candidate on the same problems in the sandbox →
gate (improvement ≥ threshold and significant) → register the candidate (always) and
activate it (only if it passed) → mark the interactions consumed. The last three happen
in one transaction: a cycle that fails anywhere registers nothing and consumes nothing.

Crash safety, when any process is killed at any point (SIGKILL included):
- nothing is lost: interactions are only ever marked, never moved or deleted;
- nothing is consumed twice: the commit marks only interactions still unconsumed and
  aborts unless it got every one of them;
- nothing is half-registered: the adapter folder is renamed into place under the
  registry lock and its row commits with the consumption; a folder whose row never
  committed is an orphan, and `recover_interrupted` deletes it, marks the dead
  process's cycle failed and removes its scratch folder. Workers, the daemon and every
  new cycle run that recovery first.

The daemon that schedules cycles is `daemon.py`; cycle jobs run in workers
(`selftrain.worker`).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from selftrain.config import Settings
from selftrain.data.curate import curate_interactions, write_snapshot
from selftrain.data.ingest import read_interactions
from selftrain.errors import SelftrainError
from selftrain.store.db import Database
from selftrain.store.locks import hold_lock
from selftrain.store.records import record_feedback, summarize_feedback, unconsumed_interactions
from selftrain.store.schema import (Alert, Cycle, DatasetSnapshot, Interaction, Job,
                                    TrainingMetric, utcnow)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
# Called inside the commit transaction; raises to stop the commit (a worker's lease check).
Fence = Callable[[Session], None]
CYCLE_LOCK = "selftrain.cycles"


@dataclass
class CycleReport:
    cycle_id: int
    status: str  # committed | skipped
    n_interactions: int
    curation: dict
    n_examples: int = 0
    dataset_snapshot: str | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    initial_eval_loss: float | None = None
    train_steps: int = 0
    baseline_version: str | None = None  # None = the base model
    baseline_pass_rate: float | None = None
    candidate_pass_rate: float | None = None
    gate: dict = field(default_factory=dict)
    deployed: bool = False
    version_id: str | None = None
    seconds: dict = field(default_factory=dict)
    message: str = ""
    carried_over: int = 0  # interactions of earlier cycles that failed the gate, learned from again
    carried_from: list = field(default_factory=list)  # those cycles' ids
    rl: dict = field(default_factory=dict)  # with cycle_rl: {method, metrics} or {method, skipped: why}


def ingest_file(db: Database, path: Path) -> tuple[int, int]:
    """Store every interaction (and its feedback) of a JSONL file: (added, already present).

    The file is validated whole before anything is written, and written in one
    transaction, so a bad line leaves the store untouched.
    """
    records = read_interactions(path)
    added = skipped = 0
    with db.session() as session:
        known = set(session.scalars(select(Interaction.external_id).where(
            Interaction.external_id.in_([r.external_id for r in records if r.external_id]))))
        for r in records:
            if r.external_id and r.external_id in known:
                skipped += 1
                continue
            known.add(r.external_id)
            row = Interaction(user=r.user, source="ingest", external_id=r.external_id,
                              category=r.category, prompt=r.prompt, code=r.code,
                              explanation=r.explanation, raw_response=r.code,
                              entry_point=r.entry_point, tests=r.tests)
            session.add(row)
            session.flush()
            if r.feedback and any(r.feedback.get(k) is not None for k in
                                  ("rating", "accepted", "corrected_code", "comment")):
                record_feedback(session, row.id, rating=r.feedback.get("rating"),
                                accepted=r.feedback.get("accepted"),
                                corrected_code=r.feedback.get("corrected_code"),
                                comment=r.feedback.get("comment"), user=r.user)
            added += 1
    return added, skipped


def make_sandbox(settings: Settings):
    from selftrain.evaluation.sandbox import Sandbox

    return Sandbox(timeout_s=settings.sandbox_timeout_s, memory_mb=settings.sandbox_memory_mb,
                   workers=settings.sandbox_workers,
                   allow_unsafe_execution=settings.allow_unsafe_execution)


def run_cycle(settings: Settings, db: Database, *, progress: Progress | None = None,
              sandbox=None, fence: Fence | None = None, owner: dict | None = None) -> CycleReport:
    """Run one cycle now. `owner` says who runs it (a worker passes its job and claim
    token) so a later recovery can tell a dead cycle from a live one; `fence` is checked
    inside the commit transaction. Refused while another cycle is running."""
    from selftrain.evaluation.suites import load_suite

    progress = progress or (lambda stage, done, total: None)
    suite = load_suite(settings.eval_suite, settings.eval_limit)  # a bad suite fails before any work
    sandbox = sandbox or make_sandbox(settings)
    recover_interrupted(settings, db)

    with db.session() as session:
        hold_lock(session, CYCLE_LOCK)
        if running := session.scalars(select(Cycle).where(Cycle.status == "running")).first():
            who = ((running.report or {}).get("owner") or {})
            raise SelftrainError(f"Cycle {running.id} is already running (on {who.get('host', '?')}, "
                                 f"pid {who.get('pid', '?')}); wait for it to finish.")
        cycle = Cycle(status="running", report={"owner": {"host": socket.gethostname(), "pid": os.getpid(),
                                                          **(owner or {})}})
        session.add(cycle)
        session.flush()
        cycle_id = cycle.id
        # Fix the set of interactions now: ones arriving during training wait for the next cycle.
        items = [(i, summarize_feedback(i.feedback)) for i in unconsumed_interactions(session)]
        interaction_ids = [i.id for i, _ in items]  # what this cycle consumes
        carried_cycles, carried = carried_over(session, settings.carry_over_cycles)
        items += [(i, summarize_feedback(i.feedback)) for i in carried]
    work = settings.artifacts_dir / "tmp" / f"cycle-{cycle_id}"
    try:
        report = _run_cycle(settings, db, cycle_id, items, interaction_ids, suite, sandbox, work,
                            progress, fence, carried_cycles)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        message = str(exc) if isinstance(exc, SelftrainError) else f"{type(exc).__name__}: {exc}"
        with db.session() as session:
            session.execute(update(Cycle).where(Cycle.id == cycle_id).values(
                status="failed", finished_at=utcnow(), error=message[:2000]))
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def carried_over(session: Session, most: int) -> tuple[list[int], list[Interaction]]:
    """The interactions of the last `most` committed cycles whose candidate failed the gate
    after the version in service was made (after the last one that passed its gate when the
    base model serves), with the ids of those cycles, oldest first.

    A candidate that missed the gate usually had too little data, not wrong data: learning
    from those users' feedback again, together with the new interactions, keeps it from
    being lost. They stay consumed by their own cycle; nothing is consumed twice.
    """
    from selftrain.registry import active_version
    from selftrain.store.schema import ModelVersion

    if most <= 0:
        return [], []
    active = active_version(session)
    if active is not None:
        since = session.scalar(select(func.max(Cycle.id)).where(Cycle.model_version_id == active.id)) or 0
    else:
        since = session.scalar(select(func.max(Cycle.id)).join(ModelVersion, Cycle.model_version_id == ModelVersion.id)
                               .where(ModelVersion.success.is_(True))) or 0
    cycle_ids = list(session.scalars(
        select(Cycle.id).join(ModelVersion, Cycle.model_version_id == ModelVersion.id)
        .where(Cycle.id > since, Cycle.status == "committed", ModelVersion.success.is_(False))
        .order_by(Cycle.id.desc()).limit(most)))[::-1]
    if not cycle_ids:
        return [], []
    rows = session.scalars(select(Interaction).where(Interaction.consumed_by_cycle.in_(cycle_ids))
                           .options(selectinload(Interaction.feedback)).order_by(Interaction.id))
    return cycle_ids, list(rows)


def _skip(db: Database, fence: Fence | None, report: CycleReport) -> CycleReport:
    with db.session() as session:
        if fence:
            fence(session)
        session.execute(update(Cycle).where(Cycle.id == report.cycle_id).values(
            status="skipped", finished_at=utcnow(), n_interactions=report.n_interactions,
            report=json_safe(asdict(report))))
    return report


def _run_cycle(settings, db, cycle_id, items, interaction_ids, suite, sandbox, work, progress,
               fence, carried_cycles=()) -> CycleReport:
    from selftrain.gating import judge, record_candidate
    from selftrain.models.base import resolve_base_model
    from selftrain.registry import active_version
    from selftrain.training import sft

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    # 1. Curate with the workspace's curation settings, never training on a problem the
    #    gate will judge (its prompts, function names and near-duplicates of its references).
    from selftrain.data.clean import Exclusions
    from selftrain.data.pipeline import CurationConfig

    if not interaction_ids:  # carried-over feedback alone was learned from once already
        return _skip(db, fence, CycleReport(cycle_id=cycle_id, status="skipped", n_interactions=0, curation={},
                                            message="No new interactions since the last cycle."))
    curation_config = CurationConfig.from_settings(settings)
    verify = None
    if curation_config.synthetic_per_example > 0:  # mutants of examples with tests must still pass them
        verify = lambda code, tests: sandbox.run(code, tests).passed  # noqa: E731
    curation = curate_interactions(items, exclusions=Exclusions.from_problems(suite.problems),
                                   config=curation_config, verify=verify)
    report = CycleReport(cycle_id=cycle_id, status="skipped", n_interactions=len(interaction_ids),
                         curation=curation.stats(), n_examples=len(curation.examples),
                         carried_over=len(items) - len(interaction_ids), carried_from=list(carried_cycles))
    lap("curate")
    if len(curation.examples) < settings.min_examples:
        report.message = (f"Only {len(curation.examples)} usable examples from {len(interaction_ids)} new "
                          f"interactions" + (f" and {report.carried_over} carried over" if report.carried_over else "")
                          + f"; a cycle needs {settings.min_examples} (min_examples).")
        return _skip(db, fence, report)
    digest, snapshot_path = write_snapshot(curation.examples, settings.artifacts_dir / "datasets")
    with db.session() as session:
        if session.get(DatasetSnapshot, digest) is None:
            session.add(DatasetSnapshot(id=digest, path=str(snapshot_path),
                                        n_examples=len(curation.examples), stats=curation.stats()))
        active = active_version(session)
        baseline_id = active.id if active else None
        baseline_adapter = active.adapter_path if active else None
    report.dataset_snapshot = digest

    # 2. Fine-tune, continuing from the adapter in service so what it learned is kept.
    location = resolve_base_model(settings.base_model, settings.model_cache_dir,
                                  settings.allow_model_downloads)
    config = sft.SFTConfig.from_settings(settings)
    steps: list[dict] = []

    def alert(kind: str, message: str, step: int) -> None:  # kept even if the cycle fails later
        with db.session() as session:
            session.add(Alert(kind=kind, message=f"step {step}: {message}", run_id=f"cycle-{cycle_id}"))

    # Checkpoints are keyed by what is trained (data and starting adapter): a cycle killed
    # mid-training and run again on the same interactions resumes where it stopped.
    checkpoints = settings.artifacts_dir / "checkpoints" / f"{digest[:16]}-{baseline_id or 'base'}"
    result = sft.run(config, curation.examples, location, work / "adapter",
                     init_adapter=baseline_adapter, on_step=steps.append,
                     progress=lambda done, total: progress("train", done, total),
                     on_alert=alert, checkpoint_dir=checkpoints)
    report.train_loss, report.eval_loss = result.train_loss, result.eval_loss
    report.initial_eval_loss, report.train_steps = result.initial_eval_loss, result.steps
    lap("train")
    candidate_dir, training_config = result.adapter_dir, {**asdict(config), "target_modules": result.target_modules}
    if settings.cycle_rl != "none":  # 2b. Align the SFT adapter with RL when there is feedback enough.
        aligned = _align(settings, db, location, result.adapter_dir, work / "rl-adapter", sandbox, report, progress)
        if aligned is not None:
            candidate_dir, training_config = aligned.adapter_dir, {**training_config, "rl": aligned.config}
        lap("rl")

    # 3. Evaluate the model in service and the candidate on the same problems; gate.
    verdict = judge(settings, location, suite, sandbox, baseline_adapter, str(candidate_dir), progress)
    baseline, candidate, decision = verdict.baseline, verdict.candidate, verdict.decision
    lap("evaluate")
    report.baseline_version = baseline_id
    report.baseline_pass_rate, report.candidate_pass_rate = baseline.pass_rate, candidate.pass_rate
    report.gate = {**asdict(decision), "confidence": 1 - settings.significance_level}
    report.deployed = decision.deploy

    # 4. Commit point: register (always), activate (only if it passed), consume, close the cycle.
    #    register() takes the registry lock first, so everything below is one writer's step.
    run_id = f"cycle-{cycle_id}"
    registered: list[str] = []
    try:
        with db.session() as session:
            version = record_candidate(
                session, settings, suite, candidate_dir, verdict, baseline_id=baseline_id,
                training_config=training_config,
                metrics={"train_loss": result.train_loss, "eval_loss": result.eval_loss, "train_steps": result.steps,
                         "train_seconds": result.seconds, "train_tokens": result.tokens},
                reason="cycle", registered=registered, dataset_snapshot_id=digest, cycle_id=cycle_id, fence=fence)
            report.version_id = version.id
            session.add_all(TrainingMetric(run_id=run_id, step=s["step"], loss=s.get("loss"),
                                           eval_loss=s.get("eval_loss"), learning_rate=s.get("learning_rate"),
                                           tokens_per_s=s.get("tokens_per_s")) for s in steps)
            consumed = 0
            for start in range(0, len(interaction_ids), 10_000):  # under SQLite's variable limit
                consumed += session.execute(
                    update(Interaction).where(Interaction.id.in_(interaction_ids[start:start + 10_000]),
                                              Interaction.consumed_by_cycle.is_(None))
                    .values(consumed_by_cycle=cycle_id)).rowcount
            if consumed != len(interaction_ids):
                raise SelftrainError(f"{len(interaction_ids) - consumed} of this cycle's interactions were "
                                     "consumed by another cycle meanwhile; nothing was committed.")
            report.status = "committed"
            report.message = "; ".join(decision.reasons)
            lap("commit")
            report.seconds = seconds
            session.execute(update(Cycle).where(Cycle.id == cycle_id).values(
                status="committed", finished_at=utcnow(), n_interactions=len(interaction_ids),
                dataset_snapshot_id=digest, model_version_id=version.id, report=json_safe(asdict(report))))
    except BaseException:
        # The version row rolled back with the transaction; its folder must not outlive it.
        for path in registered:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return report


def _align(settings, db, location, sft_adapter, out_dir, sandbox, report, progress):
    """RL (settings.cycle_rl) from the cycle's SFT adapter; None, with the reason in the
    report, when the stored feedback is not enough for it."""
    from selftrain.reinforce import align, feedback_for, shortfall

    method = settings.cycle_rl
    pairs, tasks = feedback_for(db, method)
    missing = shortfall(method, pairs, tasks, settings.rl_min_pairs)
    if missing:
        report.rl = {"method": method, "skipped": missing}
        return None
    progress("rl", 0, 1)
    aligned = align(settings, method, location, str(sft_adapter), out_dir, pairs=pairs, tasks=tasks, sandbox=sandbox)
    progress("rl", 1, 1)
    report.rl = {"method": method, "metrics": aligned.metrics}
    return aligned


def interaction_count(db: Database) -> tuple[int, int]:
    """(all interactions, those no cycle has consumed yet)."""
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Interaction)) or 0
        fresh = session.scalar(select(func.count()).select_from(Interaction).where(
            Interaction.consumed_by_cycle.is_(None))) or 0
    return total, fresh


def json_safe(value):
    """`value` with non-finite floats replaced by None: PostgreSQL's JSON has no Infinity
    or NaN (an effect size is infinite when every item moved the same way)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --- recovery ---------------------------------------------------------------------------

def _owner_alive(session: Session, owner: dict) -> bool:
    """Is the process that started a cycle still running it?"""
    if owner.get("job") is not None:  # a worker's job: alive while it still holds the claim
        job = session.get(Job, owner["job"])
        return job is not None and job.status == "running" and job.worker == owner.get("token")
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if owner["pid"] == os.getpid():
            return True
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Another machine's `selftrain cycle` (no job, no lease): it cannot be judged from here.
    return bool(owner.get("host"))


def recover_interrupted(settings: Settings, db: Database) -> dict:
    """Clean up after processes that died mid-cycle: their cycles are marked failed, their
    scratch folders removed, and adapter folders whose registration never committed are
    deleted. Safe to run at any time, from any process."""
    from selftrain.registry import remove_orphans

    failed = []
    with db.session() as session:
        hold_lock(session, CYCLE_LOCK)
        for cycle in session.scalars(select(Cycle).where(Cycle.status == "running")):
            owner = (cycle.report or {}).get("owner") or {}
            if not _owner_alive(session, owner):
                where = f"job {owner['job']}" if owner.get("job") is not None else f"pid {owner.get('pid', '?')}"
                cycle.status, cycle.finished_at = "failed", utcnow()
                cycle.error = f"Interrupted: the process running it ({where}) stopped before it committed."
                failed.append(cycle.id)
        running = {f"cycle-{i}" for i in session.scalars(select(Cycle.id).where(Cycle.status == "running"))}
    scratch = settings.artifacts_dir / "tmp"
    removed = []
    if scratch.is_dir():
        for folder in scratch.iterdir():
            if folder.name.startswith("cycle-") and folder.name not in running:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
    with db.session() as session:
        orphans = remove_orphans(session, settings.artifacts_dir / "versions")
    return {"failed_cycles": failed, "scratch_removed": removed, "orphan_versions": orphans}

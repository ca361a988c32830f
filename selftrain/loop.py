"""One continuous-learning cycle, and importing interactions into the store.

This is the only module that wires data → training → evaluation → registry. A cycle:
take unconsumed interactions with their feedback → curate → snapshot → LoRA SFT →
evaluate the model in service and the candidate on the same problems in the sandbox →
gate (improvement ≥ threshold and significant) → register the candidate (always) and
activate it (only if it passed) → mark the interactions consumed. The last three happen
in one transaction: a cycle that fails anywhere registers nothing and consumes nothing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select, update

from selftrain.config import Settings
from selftrain.data.curate import curate_interactions, normalize, write_snapshot
from selftrain.data.ingest import read_interactions
from selftrain.errors import SelftrainError
from selftrain.store.db import Database
from selftrain.store.records import record_feedback, summarize_feedback, unconsumed_interactions
from selftrain.store.schema import (Cycle, DatasetSnapshot, EvaluationRun, Interaction,
                                    TrainingMetric, utcnow)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


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
              sandbox=None) -> CycleReport:
    from selftrain.evaluation.suites import load_suite

    progress = progress or (lambda stage, done, total: None)
    suite = load_suite(settings.eval_suite, settings.eval_limit)  # a bad suite fails before any work
    sandbox = sandbox or make_sandbox(settings)

    with db.session() as session:
        cycle = Cycle(status="running")
        session.add(cycle)
        session.flush()
        cycle_id = cycle.id
        # Fix the set of interactions now: ones arriving during training wait for the next cycle.
        items = [(i, summarize_feedback(i.feedback)) for i in unconsumed_interactions(session)]
    interaction_ids = [i.id for i, _ in items]
    work = settings.artifacts_dir / "tmp" / f"cycle-{cycle_id}"
    try:
        report = _run_cycle(settings, db, cycle_id, items, interaction_ids, suite, sandbox, work, progress)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        message = str(exc) if isinstance(exc, SelftrainError) else f"{type(exc).__name__}: {exc}"
        with db.session() as session:
            session.execute(update(Cycle).where(Cycle.id == cycle_id).values(
                status="failed", finished_at=utcnow(), error=message[:2000]))
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_cycle(settings, db, cycle_id, items, interaction_ids, suite, sandbox, work, progress) -> CycleReport:
    from selftrain.evaluation.harness import evaluate_model
    from selftrain.evaluation.stats import gate
    from selftrain.models.base import load_model, resolve_base_model
    from selftrain.registry import activate, active_version, register
    from selftrain.training import sft

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    # 1. Curate, never training on a problem the gate will judge.
    curation = curate_interactions(
        items, exclude_prompts={normalize(p.prompt) for p in suite.problems},
        exclude_entry_points={p.entry_point for p in suite.problems})
    report = CycleReport(cycle_id=cycle_id, status="skipped", n_interactions=len(items),
                         curation=curation.stats(), n_examples=len(curation.examples))
    lap("curate")
    if len(curation.examples) < settings.min_examples:
        report.message = (f"Only {len(curation.examples)} usable examples from {len(items)} new "
                          f"interactions; a cycle needs {settings.min_examples} (min_examples).")
        with db.session() as session:
            session.execute(update(Cycle).where(Cycle.id == cycle_id).values(
                status="skipped", finished_at=utcnow(), n_interactions=len(items),
                report=asdict(report)))
        return report
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
    result = sft.run(config, curation.examples, location, work / "adapter",
                     init_adapter=baseline_adapter, on_step=steps.append,
                     progress=lambda done, total: progress("train", done, total))
    report.train_loss, report.eval_loss = result.train_loss, result.eval_loss
    report.initial_eval_loss, report.train_steps = result.initial_eval_loss, result.steps
    lap("train")

    # 3. Evaluate the model in service and the candidate on the same problems.
    def evaluate(adapter, stage):
        progress(stage, 0, len(suite.problems))
        model, tokenizer = load_model(location, settings.dtype, adapter=adapter)
        outcome = evaluate_model(model, tokenizer, suite, sandbox, prompt_format=settings.prompt_format,
                                 max_new_tokens=settings.max_new_tokens,
                                 batch_size=settings.generation_batch_size)
        progress(stage, len(suite.problems), len(suite.problems))
        return outcome

    baseline = evaluate(baseline_adapter, "evaluate baseline")
    candidate = evaluate(str(result.adapter_dir), "evaluate candidate")
    lap("evaluate")
    base_pass = [i.passed for i in baseline.items]
    cand_pass = [i.passed for i in candidate.items]
    decision = gate([float(p) for p in base_pass], [float(p) for p in cand_pass],
                    min_improvement=settings.improvement_threshold, alpha=settings.significance_level,
                    baseline_pass=base_pass, candidate_pass=cand_pass)
    report.baseline_version = baseline_id
    report.baseline_pass_rate, report.candidate_pass_rate = baseline.pass_rate, candidate.pass_rate
    report.gate = {**asdict(decision), "confidence": 1 - settings.significance_level}
    report.deployed = decision.deploy

    # 4. Commit point: register (always), activate (only if it passed), consume, close the cycle.
    run_id = f"cycle-{cycle_id}"
    registered: list[str] = []
    try:
        with db.session() as session:
            version = register(
                session, result.adapter_dir, settings.artifacts_dir / "versions",
                base_model=settings.base_model, parent_id=baseline_id, dataset_snapshot_id=digest,
                training_config={**asdict(config), "target_modules": result.target_modules},
                metrics={"pass_rate": candidate.pass_rate, "baseline_pass_rate": baseline.pass_rate,
                         "syntax_rate": candidate.syntax_rate, "train_loss": result.train_loss,
                         "eval_loss": result.eval_loss, "train_steps": result.steps,
                         "train_seconds": result.seconds, "train_tokens": result.tokens},
                eval_report={"suite": suite.name, "suite_digest": suite.digest, "gate": asdict(decision),
                             "baseline": baseline.to_json(), "candidate": candidate.to_json()},
                success=decision.deploy)
            registered.append(version.adapter_path)
            report.version_id = version.id
            if decision.deploy:
                activate(session, version.id)
            for version_id, outcome in ((baseline_id, baseline), (version.id, candidate)):
                session.add(EvaluationRun(model_version=version_id, suite=suite.name, cycle_id=cycle_id,
                                          n_items=len(outcome.items), metrics=outcome.metrics(),
                                          items=outcome.to_json()))
            session.add_all(TrainingMetric(run_id=run_id, step=s["step"], loss=s.get("loss"),
                                           eval_loss=s.get("eval_loss"), learning_rate=s.get("learning_rate"),
                                           tokens_per_s=s.get("tokens_per_s")) for s in steps)
            for start in range(0, len(interaction_ids), 10_000):  # under SQLite's variable limit
                session.execute(update(Interaction)
                                .where(Interaction.id.in_(interaction_ids[start:start + 10_000]))
                                .values(consumed_by_cycle=cycle_id))
            report.status = "committed"
            report.message = "; ".join(decision.reasons)
            lap("commit")
            report.seconds = seconds
            session.execute(update(Cycle).where(Cycle.id == cycle_id).values(
                status="committed", finished_at=utcnow(), n_interactions=len(items),
                dataset_snapshot_id=digest, model_version_id=version.id, report=asdict(report)))
    except BaseException:
        # The version row rolled back with the transaction; its folder must not outlive it.
        for path in registered:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return report


def interaction_count(db: Database) -> tuple[int, int]:
    """(all interactions, those no cycle has consumed yet)."""
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Interaction)) or 0
        fresh = session.scalar(select(func.count()).select_from(Interaction).where(
            Interaction.consumed_by_cycle.is_(None))) or 0
    return total, fresh

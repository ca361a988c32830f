"""Judge a candidate adapter against the model in service, and record the verdict.

Both ways of making a candidate use this: the learning cycle (`loop.py`, LoRA SFT on
curated feedback) and RL jobs (`jobs.py`, PPO or DPO). The two models answer the same
problems of the evaluation suite in the sandbox; the gate deploys only an improvement of
at least `improvement_threshold` that is significant at `significance_level` (exact
McNemar on the paired pass/fail outcomes). The candidate is registered either way, with
both evaluations, and activated only if it passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session

from selftrain.config import Settings

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Verdict:
    baseline: object  # evaluation.harness.SuiteResult
    candidate: object
    decision: object  # evaluation.stats.GateDecision


def judge(settings: Settings, location: str, suite, sandbox, baseline_adapter: str | None,
          candidate_adapter: str, progress: Progress | None = None) -> Verdict:
    """Evaluate the model in service (`baseline_adapter`, None = the base model) and the
    candidate on the same problems, then apply the gate. The model in service's evaluation
    is reused while it stays in service (evaluation/cache.py)."""
    from selftrain.evaluation.cache import evaluate_version
    from selftrain.evaluation.stats import gate

    progress = progress or (lambda stage, done, total: None)

    def evaluate(adapter, stage):
        progress(stage, 0, len(suite.problems))
        outcome = evaluate_version(settings, location, adapter, suite, sandbox)
        progress(stage, len(suite.problems), len(suite.problems))
        return outcome

    baseline = evaluate(baseline_adapter, "evaluate baseline")
    candidate = evaluate(candidate_adapter, "evaluate candidate")
    base_pass = [i.passed for i in baseline.items]
    cand_pass = [i.passed for i in candidate.items]
    decision = gate([float(p) for p in base_pass], [float(p) for p in cand_pass],
                    min_improvement=settings.improvement_threshold, alpha=settings.significance_level,
                    baseline_pass=base_pass, candidate_pass=cand_pass)
    return Verdict(baseline, candidate, decision)


def record_candidate(session: Session, settings: Settings, suite, adapter_dir: Path, verdict: Verdict, *,
                     baseline_id: str | None, training_config: dict, metrics: dict, reason: str,
                     registered: list[str], dataset_snapshot_id: str | None = None, cycle_id: int | None = None,
                     fence: Callable[[Session], None] | None = None):
    """Register the candidate (always) with both evaluations, activate it if it passed the
    gate; its ModelVersion. The adapter folder's new path is appended to `registered` as
    soon as it exists, so a caller whose transaction fails can remove it. `fence` runs
    after the registration, before anything is activated."""
    from selftrain.loop import json_safe
    from selftrain.registry import activate, register
    from selftrain.store.schema import EvaluationRun

    baseline, candidate, decision = verdict.baseline, verdict.candidate, verdict.decision
    version = register(
        session, adapter_dir, settings.artifacts_dir / "versions", base_model=settings.base_model,
        parent_id=baseline_id, dataset_snapshot_id=dataset_snapshot_id, training_config=json_safe(training_config),
        metrics=json_safe({"pass_rate": candidate.pass_rate, "baseline_pass_rate": baseline.pass_rate,
                           "syntax_rate": candidate.syntax_rate, **metrics}),
        eval_report=json_safe({"suite": suite.name, "suite_digest": suite.digest, "gate": asdict(decision),
                               "baseline": baseline.to_json(), "candidate": candidate.to_json()}),
        success=decision.deploy)
    registered.append(version.adapter_path)
    if fence:
        fence(session)
    if decision.deploy:
        activate(session, version.id, reason=reason)
    for version_id, outcome in ((baseline_id, baseline), (version.id, candidate)):
        session.add(EvaluationRun(model_version=version_id, suite=suite.name, cycle_id=cycle_id,
                                  n_items=len(outcome.items), metrics=outcome.metrics(), items=outcome.to_json()))
    return version

"""The training-runs pages: loss curves, the monitor's alerts on them, and resolving alerts.

A run is what `training_metrics.run_id` names: `cycle-N` for a cycle's fine-tuning, a
version id for an SFT job. Alerts from the training monitor say `step N: ...`; that
step puts them on the curve as a marker. Reinforcement-learning curves (reward, KL)
come from a version's `metrics["history"]`, the per-iteration records the PPO and GRPO
recipes return (`{"reward": ..., "kl": ...}`), when the job that registered the version
stored them there.

The curve builders here are shared with the versions pages.
"""

from __future__ import annotations

import re

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from selftrain.dashboard.charts import Marker, Series, bar_chart, line_chart
from selftrain.dashboard.web import (Form, PageError, Viewer, admin_form, page_router, redirect, render, row_id,
                                     safe_next, viewer)
from selftrain.store.schema import Alert, Cycle, ModelVersion, TrainingMetric

router = page_router()
STEP = re.compile(r"^\s*step (\d+)\b")
RUN_ID = re.compile(r"^[\w.-]{1,64}$")


def alert_step(message: str) -> int | None:
    """The training step an alert names ("step 120: loss spiked ..."), if any."""
    found = STEP.match(message or "")
    return int(found.group(1)) if found else None


def rl_history(version: ModelVersion | None) -> list[dict]:
    history = ((version.metrics or {}) if version is not None else {}).get("history")
    return [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []


def curves(metrics: list[TrainingMetric], alerts: list[Alert], history: list[dict], *, label: str = "") -> list[str]:
    """The charts of one run: loss and eval loss (alerts as markers), learning rate and
    throughput when logged, reward and KL when the run was reinforcement learning."""
    prefix = f"{label}: " if label else ""
    markers = [Marker(step, f"{a.kind}: {a.message}") for a in alerts if (step := alert_step(a.message)) is not None]
    charts = []
    if metrics or markers:
        charts.append(line_chart([Series("loss", [(m.step, m.loss) for m in metrics]),
                                  Series("eval loss", [(m.step, m.eval_loss) for m in metrics])],
                                 title=f"{prefix}loss by step", markers=markers,
                                 empty="No loss was logged for this run."))
    for name, title in (("learning_rate", "learning rate"), ("tokens_per_s", "tokens per second")):
        values = [(m.step, getattr(m, name)) for m in metrics]
        if any(v is not None for _, v in values):
            charts.append(line_chart([Series(title, values)], title=f"{prefix}{title} by step", height=180))
    if history:
        steps = [r.get("iteration", r.get("step", i)) for i, r in enumerate(history)]
        steps = [s if isinstance(s, (int, float)) else i for i, s in enumerate(steps)]
        reward = [(s, _number(r.get("reward", r.get("rewards/margins")))) for s, r in zip(steps, history)]
        kl = [(s, _number(r.get("kl"))) for s, r in zip(steps, history)]
        charts.append(line_chart([Series("reward", reward)], title=f"{prefix}reward by iteration", height=200,
                                 empty="No reward was logged."))
        charts.append(line_chart([Series("KL to the reference", kl)], title=f"{prefix}KL by iteration",
                                 height=200, empty="No KL was logged."))
    return charts


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metrics_of(session, run_ids: list[str]) -> list[TrainingMetric]:
    if not run_ids:
        return []
    return list(session.scalars(select(TrainingMetric).where(TrainingMetric.run_id.in_(run_ids))
                                .order_by(TrainingMetric.step, TrainingMetric.id)))


def alerts_of(session, run_ids: list[str]) -> list[Alert]:
    if not run_ids:
        return []
    return list(session.scalars(select(Alert).where(Alert.run_id.in_(run_ids)).order_by(Alert.id)))


def version_of_run(session, run_id: str) -> ModelVersion | None:
    """The version a run produced: the run is named after it (SFT jobs) or its cycle."""
    if (version := session.get(ModelVersion, run_id)) is not None:
        return version
    if run_id.startswith("cycle-") and run_id[6:].isdigit():
        cycle = session.get(Cycle, int(run_id[6:]))
        if cycle is not None and cycle.model_version_id:
            return session.get(ModelVersion, cycle.model_version_id)
    return None


def overview(request: Request) -> dict:
    show = request.query_params.get("alerts", "open")
    if show not in ("open", "all"):
        raise PageError(422, "'alerts' must be 'open' or 'all'.")
    with request.app.state.db.session() as session:
        runs = session.execute(
            select(TrainingMetric.run_id, func.count(), func.max(TrainingMetric.step),
                   func.min(TrainingMetric.created_at), func.max(TrainingMetric.created_at))
            .group_by(TrainingMetric.run_id).order_by(func.max(TrainingMetric.created_at).desc()).limit(100)).all()
        alert_counts = dict(session.execute(select(Alert.run_id, func.count()).group_by(Alert.run_id)).all())
        recent = [r.run_id for r in runs[:6]][::-1]
        losses = session.execute(select(TrainingMetric.run_id, TrainingMetric.step, TrainingMetric.loss)
                                 .where(TrainingMetric.run_id.in_(recent))
                                 .order_by(TrainingMetric.step, TrainingMetric.id)).all() if recent else []
        kinds = session.execute(select(Alert.kind, func.count()).group_by(Alert.kind).order_by(Alert.kind)).all()
        query = select(Alert).order_by(Alert.id.desc()).limit(200)
        alerts = list(session.scalars(query if show == "all" else query.where(Alert.resolved.is_(False))))
    by_run = {run: [] for run in recent}
    for run, step, loss in losses:
        by_run[run].append((step, loss))
    return dict(runs=runs, alert_counts=alert_counts, alerts=alerts, show=show,
                loss_chart=line_chart([Series(run, points) for run, points in by_run.items()],
                                      title="Training loss of the latest runs", height=260,
                                      empty="No training run has logged a loss yet."),
                alert_chart=bar_chart([k for k, _ in kinds], [("alerts", [n for _, n in kinds])],
                                      title="Monitor alerts by kind", height=200, empty="No alerts, ever."))


@router.get("/training")
async def runs(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "training.html", nav="training", **await run_in_threadpool(overview, request))


def run_page(request: Request, run_id: str) -> dict:
    if not RUN_ID.match(run_id):
        raise PageError(404, "There is no training run with that id.")
    with request.app.state.db.session() as session:
        metrics, alerts = metrics_of(session, [run_id]), alerts_of(session, [run_id])
        version = version_of_run(session, run_id)
        history = rl_history(version) if version is not None and version.id == run_id else []
        if not metrics and not alerts and not history:
            raise PageError(404, f"There is no training run {run_id!r}; the training page lists them.")
    return dict(run_id=run_id, metrics=metrics, alerts=alerts, version=version,
                charts=curves(metrics, alerts, history), last=metrics[-1] if metrics else None)


@router.get("/training/{run_id}")
async def run(request: Request, run_id: str, who: Viewer = Depends(viewer)):
    return render(request, "training_run.html", nav="training", **await run_in_threadpool(run_page, request, run_id))


def resolve_alert(request: Request, alert_id: int) -> None:
    row_id(alert_id, "alert")
    with request.app.state.db.session() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise PageError(404, f"There is no alert with id {alert_id}.")
        alert.resolved = True


@router.post("/alerts/{alert_id:int}/resolve")
async def resolve(request: Request, alert_id: int, form: Form = Depends(admin_form)):
    await run_in_threadpool(resolve_alert, request, alert_id)
    return redirect(safe_next(form.get("next") or "/training").split("?")[0] + "?done=resolved")

"""The versions pages: every version's metrics, one version in full (evaluation report,
dataset snapshot, training curves), two side by side, and (admin keys) activate and
roll back, each behind a confirmation page.

Activation and rollback are `selftrain.registry`'s, as for `selftrain models activate`,
`selftrain rollback` and the admin API; the running engine is told at once and swaps
the model without a restart. The confirmation page shows what the action *would* do by
running it in a transaction that is then rolled back: the registry's own rules (which
version a rollback picks, whether files still match their hashes) decide the preview,
so the page cannot promise one thing and do another.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from selftrain import registry
from selftrain.dashboard.charts import Series, bar_chart, line_chart
from selftrain.dashboard.overview import pass_rate_series
from selftrain.dashboard.training import alerts_of, curves, metrics_of, rl_history
from selftrain.dashboard.web import (Form, PageError, Viewer, admin_form, admin_viewer, page_router, redirect, render,
                                     viewer)
from selftrain.errors import SelftrainError
from selftrain.store.schema import Cycle, DatasetSnapshot, EvaluationRun, Interaction, ModelVersion

router = page_router()
VERSION_ID = r"{version_id:str}"


def versions_page(request: Request) -> dict:
    with request.app.state.db.session() as session:
        versions = registry.list_versions(session)
        answered = dict(session.execute(select(Interaction.model_version, func.count())
                                        .group_by(Interaction.model_version)).all())
        runs = session.execute(select(EvaluationRun.created_at, EvaluationRun.model_version, EvaluationRun.metrics)
                               .order_by(EvaluationRun.id.desc()).limit(500)).all()[::-1]
    active = next((v for v in versions if v.is_active), None)
    return dict(versions=versions[::-1], active=active, answered=answered,
                serving=request.app.state.engine.stats().get("version"),
                chart=line_chart(pass_rate_series(versions, runs), title="Pass rate per version over time",
                                 time_axis=True, y_min=0, y_max=1, y_format=lambda v: f"{100 * v:.0f}%",
                                 empty="No version has been evaluated yet."))


@router.get("/versions")
async def versions(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "versions.html", nav="versions", **await run_in_threadpool(versions_page, request))


def run_ids(session, version: ModelVersion) -> list[str]:
    """The training runs that produced a version: its own id (SFT jobs) and its cycle's."""
    cycles = session.scalars(select(Cycle.id).where(Cycle.model_version_id == version.id)).all()
    return [version.id] + [f"cycle-{c}" for c in cycles]


def snapshot_charts(stats: dict) -> list[str]:
    """The snapshot's curation numbers as bars: why examples were dropped, categories kept,
    quality scores (the stats `curate_interactions` records)."""
    charts = []
    for key, title in (("dropped", "examples dropped, by reason"), ("categories", "examples kept, by category")):
        counts = stats.get(key)
        if isinstance(counts, dict) and counts:
            charts.append(bar_chart(list(counts), [(key, [v if isinstance(v, (int, float)) else 0
                                                          for v in counts.values()])], title=title, height=200))
    histogram = ((stats.get("quality") or {}).get("scored") or {}).get("histogram")
    if isinstance(histogram, list) and len(histogram) == 10:
        charts.append(bar_chart([f"{i / 10:.1f}" for i in range(10)], [("interactions", histogram)],
                                title="quality score of every interaction (bins of 0.1)", height=200))
    return charts


def item_rows(report: dict) -> list[dict]:
    """Each evaluation problem: did the baseline and the candidate pass it?"""
    baseline = {i.get("task_id"): i for i in report.get("baseline") or [] if isinstance(i, dict)}
    return [{"task_id": i.get("task_id"), "baseline": (baseline.get(i.get("task_id")) or {}).get("passed"),
             "candidate": i.get("passed"), "status": i.get("status"), "error": i.get("error") or ""}
            for i in report.get("candidate") or [] if isinstance(i, dict)]


def version_page(request: Request, version_id: str) -> dict:
    with request.app.state.db.session() as session:
        try:
            described = registry.describe(session, version_id)
        except SelftrainError as exc:
            raise PageError(404, str(exc)) from None
        version = session.get(ModelVersion, version_id)
        snapshot = session.get(DatasetSnapshot, version.dataset_snapshot_id) if version.dataset_snapshot_id else None
        runs = run_ids(session, version)
        metrics, alerts = metrics_of(session, runs), alerts_of(session, runs)
        answered = session.scalar(select(func.count()).select_from(Interaction)
                                  .where(Interaction.model_version == version_id))
    report = version.eval_report or {}
    shown = {k: v for k, v in (version.metrics or {}).items() if k != "history"}  # history: the RL charts
    return dict(version=version, described=described, metrics=shown, snapshot=snapshot, runs=runs, alerts=alerts,
                answered=answered, report=report, items=item_rows(report),
                snapshot_charts=snapshot_charts(snapshot.stats or {}) if snapshot else [],
                charts=curves(metrics, alerts, rl_history(version)))


def preview(request: Request, action) -> dict:
    """What `action(session)` would make active, or the sentence it refuses with, from a
    transaction that is rolled back."""
    with request.app.state.db.session() as session:
        before = registry.active_version(session)
        before_id = before.id if before else None
        try:
            action(session)
            after = registry.active_version(session)
            return dict(current=before_id, target=after.id if after else None, refusal=None)
        except SelftrainError as exc:
            return dict(current=before_id, target=None, refusal=str(exc))
        finally:
            session.rollback()


def version_or_404(request: Request, version_id: str) -> None:
    with request.app.state.db.session() as session:
        if session.get(ModelVersion, version_id) is None:
            raise PageError(404, f"There is no model version {version_id[:64]!r}; the versions page lists them.")


def apply(request: Request, action) -> None:
    with request.app.state.db.session() as session:
        try:
            action(session)
        except SelftrainError as exc:
            raise PageError(409, str(exc)) from None
    request.app.state.engine.refresh_version()


@router.get("/versions/rollback")
async def rollback_confirm(request: Request, who: Viewer = Depends(admin_viewer)):
    plain = await run_in_threadpool(preview, request, registry.rollback)
    to_base = await run_in_threadpool(preview, request, lambda s: registry.rollback(s, to_base=True))
    return render(request, "confirm.html", nav="versions", action="rollback", plain=plain, to_base=to_base)


@router.post("/versions/rollback")
async def rollback(request: Request, form: Form = Depends(admin_form)):
    to_base = form.get("to_base") == "yes"
    await run_in_threadpool(apply, request, lambda s: registry.rollback(s, to_base=to_base))
    return redirect("/versions?done=rolled_back")


@router.get("/versions/compare")
async def compare(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "compare.html", nav="versions", **await run_in_threadpool(compare_page, request))


def compare_page(request: Request) -> dict:
    a, b = request.query_params.get("a", "").strip(), request.query_params.get("b", "").strip()
    if not a or not b:
        raise PageError(422, "Choose two versions to compare (a and b).")
    if a == b:
        raise PageError(422, f"Choose two different versions to compare; both are {a[:64]!r}.")
    with request.app.state.db.session() as session:
        try:
            comparison = registry.compare(session, a, b)
        except SelftrainError as exc:
            raise PageError(404, str(exc)) from None
        pair = [session.get(ModelVersion, a), session.get(ModelVersion, b)]
        losses = [[(m.step, m.loss) for m in metrics_of(session, run_ids(session, v))] for v in pair]
    configs = [p.training_config or {} for p in pair]
    differing = sorted(k for k in set(configs[0]) | set(configs[1]) if configs[0].get(k) != configs[1].get(k))
    outcomes = [{i["task_id"]: i for i in item_rows(p.eval_report or {})} for p in pair]
    changed = [(task, outcomes[0][task]["candidate"], outcomes[1][task]["candidate"])
               for task in sorted(set(outcomes[0]) & set(outcomes[1]))
               if outcomes[0][task]["candidate"] != outcomes[1][task]["candidate"]]
    return dict(a=pair[0], b=pair[1], comparison=comparison, differing=differing, configs=configs, changed=changed,
                loss_chart=line_chart([Series(f"{p.id} loss", loss) for p, loss in zip(pair, losses)],
                                      title="Training loss by step", empty="Neither version logged a loss."))


@router.get("/versions/" + VERSION_ID)
async def version(request: Request, version_id: str, who: Viewer = Depends(viewer)):
    return render(request, "version.html", nav="versions", **await run_in_threadpool(version_page, request, version_id))


@router.get("/versions/" + VERSION_ID + "/activate")
async def activate_confirm(request: Request, version_id: str, who: Viewer = Depends(admin_viewer)):
    await run_in_threadpool(version_or_404, request, version_id)
    plain = await run_in_threadpool(preview, request, lambda s: registry.activate(s, version_id))
    return render(request, "confirm.html", nav="versions", action="activate", version_id=version_id, plain=plain)


@router.post("/versions/" + VERSION_ID + "/activate")
async def activate(request: Request, version_id: str, form: Form = Depends(admin_form)):
    await run_in_threadpool(version_or_404, request, version_id)
    await run_in_threadpool(apply, request, lambda s: registry.activate(s, version_id))
    return redirect(f"/versions/{version_id}?done=activated")

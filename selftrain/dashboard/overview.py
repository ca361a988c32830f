"""The overview page: what serves, how well each version did, how much the agent is used
and rated, how close the next learning cycle is, and what needs a person's attention.

Counts per day are one GROUP BY on an indexed `created_at` range (the last 30 days), so
the page costs the same with 100,000 interactions as with 100. A user key sees the
counts of its own interactions; versions, the cycle trigger and alerts are the same for
everyone.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import case, func, select

from selftrain.dashboard.charts import Series, bar_chart, line_chart
from selftrain.dashboard.web import Viewer, page_router, render, viewer
from selftrain.registry import active_version, list_versions
from selftrain.store.records import count_unconsumed
from selftrain.store.schema import Alert, EvaluationRun, Feedback, Interaction, Job

router = page_router()
DAYS = 30


def day_window(days: int = DAYS, now: datetime | None = None) -> tuple[datetime, list[str]]:
    """Midnight UTC `days - 1` days ago, and the `days` dates (YYYY-MM-DD) from then to today."""
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=days - 1)
    return since, [(since + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]


def interactions_per_day(session, since: datetime, user: str | None) -> dict[str, int]:
    day = func.date(Interaction.created_at)
    query = select(day, func.count()).where(Interaction.created_at >= since).group_by(day)
    if user is not None:
        query = query.where(Interaction.user == user)
    return {str(d): n for d, n in session.execute(query)}


def feedback_per_day(session, since: datetime, user: str | None) -> dict[str, tuple[int, int, int]]:
    """Per day: (feedback rows, rows that accept or reject, rows that accept)."""
    day = func.date(Feedback.created_at)
    query = (select(day, func.count(), func.count(Feedback.accepted),
                    func.sum(case((Feedback.accepted.is_(True), 1), else_=0)))
             .where(Feedback.created_at >= since).group_by(day))
    if user is not None:  # feedback on the user's own interactions
        query = query.join(Interaction, Interaction.id == Feedback.interaction_id).where(Interaction.user == user)
    return {str(d): (n, judged, int(accepted or 0)) for d, n, judged, accepted in session.execute(query)}


def acceptance(session, user: str | None) -> tuple[int, int]:
    """(accepted, judged) over all feedback that says accept or reject."""
    query = select(func.count(Feedback.accepted), func.sum(case((Feedback.accepted.is_(True), 1), else_=0)))
    if user is not None:
        query = query.join(Interaction, Interaction.id == Feedback.interaction_id).where(Interaction.user == user)
    judged, accepted = session.execute(query).one()
    return int(accepted or 0), int(judged or 0)


def pass_rate_series(versions, runs) -> list[Series]:
    """Pass rate over time: each version's candidate and baseline at its gate, and every
    stored evaluation run (labelled with the version it evaluated)."""
    def stamp(moment: datetime) -> float:
        return (moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment).timestamp()

    gated = [v for v in versions if isinstance((v.metrics or {}).get("pass_rate"), (int, float))]
    series = [Series("version at its gate", [(stamp(v.created_at), v.metrics["pass_rate"]) for v in gated],
                     [v.id for v in gated]),
              Series("baseline at that gate", [(stamp(v.created_at), (v.metrics or {}).get("baseline_pass_rate"))
                                               for v in gated], [v.id for v in gated])]
    scored = [r for r in runs if isinstance((r.metrics or {}).get("pass_rate"), (int, float))]
    if scored:
        series.append(Series("evaluation runs", [(stamp(r.created_at), r.metrics["pass_rate"]) for r in scored],
                             [r.model_version or "base" for r in scored]))
    return series


def gather(request: Request, who: Viewer) -> dict:
    settings, db = request.app.state.settings, request.app.state.db
    user = None if who.is_admin else who.name
    since, days = day_window()
    with db.session() as session:
        active = active_version(session)
        versions = list_versions(session)
        runs = session.execute(select(EvaluationRun.created_at, EvaluationRun.model_version, EvaluationRun.metrics)
                               .order_by(EvaluationRun.id.desc()).limit(500)).all()[::-1]
        per_day = interactions_per_day(session, since, user)
        feedback = feedback_per_day(session, since, user)
        accepted, judged = acceptance(session, user)
        total = session.scalar(select(func.count()).select_from(Interaction)
                               .where(*([Interaction.user == user] if user else [])))
        unconsumed = count_unconsumed(session)
        cycle_jobs = session.scalar(select(func.count()).select_from(Job).where(
            Job.type == "cycle", Job.status.in_(("queued", "running"))))
        open_alerts = session.scalar(select(func.count()).select_from(Alert).where(Alert.resolved.is_(False)))
        alerts = list(session.scalars(select(Alert).where(Alert.resolved.is_(False))
                                      .order_by(Alert.id.desc()).limit(8)))
    labels = [d[5:] for d in days]  # MM-DD
    daily_rate = [(i, feedback[d][2] / feedback[d][1]) for i, d in enumerate(days)
                  if d in feedback and feedback[d][1]]
    threshold = settings.learning_threshold
    month_judged = sum(feedback[d][1] for d in days if d in feedback)
    month_accepted = sum(feedback[d][2] for d in days if d in feedback)
    return dict(
        active=active, serving=request.app.state.engine.stats().get("version"), n_versions=len(versions),
        total=total, last_month=sum(per_day.values()),
        acceptance_all=accepted / judged if judged else None, judged_all=judged,
        acceptance_month=month_accepted / month_judged if month_judged else None,
        unconsumed=unconsumed, threshold=threshold, cycle_jobs=cycle_jobs,
        open_alerts=open_alerts, alerts=alerts,
        pass_chart=line_chart(pass_rate_series(versions, runs), title="Pass rate per version over time",
                              time_axis=True, y_min=0, y_max=1, y_format=lambda v: f"{100 * v:.0f}%",
                              empty="No version has been evaluated yet."),
        usage_chart=bar_chart(labels, [("interactions", [per_day.get(d, 0) for d in days]),
                                       ("feedback", [feedback.get(d, (0, 0, 0))[0] for d in days])],
                              title=f"Interactions and feedback per day (last {DAYS} days, UTC)"),
        acceptance_chart=line_chart([Series("accepted share of accept/reject feedback",
                                            [((since + timedelta(days=i)).timestamp(), rate)
                                             for i, rate in daily_rate])],
                                    title=f"Acceptance rate per day (last {DAYS} days, UTC)", time_axis=True,
                                    y_min=0, y_max=1, y_format=lambda v: f"{100 * v:.0f}%",
                                    empty="No accept/reject feedback in the last 30 days."))


@router.get("/")
async def overview(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "overview.html", nav="overview", **await run_in_threadpool(gather, request, who))

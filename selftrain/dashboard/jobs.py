"""The jobs pages: the queue with live status, one job with its log and errors, and
(admin keys) submit, cancel and retry.

Everything goes through `selftrain.scheduler`, as `selftrain jobs` and the admin API
do: its payload checks and its rules about which states may be cancelled or retried.
The list refreshes itself every few seconds (`static/dashboard.js` fetches
`/jobs/rows` and swaps the table body); without JavaScript it is a plain page.

A job's log is what the database knows: its row's timestamps, attempts, worker and
error, the alerts its training raised and, for cycle jobs, the cycle's own status.
Progress shows the queue position while queued; while running, how long it has run,
its attempt and the age of the last heartbeat (a stale heartbeat means a dead worker),
plus a bar when the job's row carries `result.progress = {stage, done, total}`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from selftrain import scheduler
from selftrain.dashboard.web import (Form, PageError, Viewer, admin_form, duration, page_number, page_router,
                                     redirect, render, row_id, viewer)
from selftrain.errors import SelftrainError
from selftrain.store.schema import Alert, Cycle, Job

router = page_router()


def _seconds_since(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment
    return (datetime.now(timezone.utc) - moment).total_seconds()


def progress(job: Job, position: int | None) -> dict:
    """What the progress column says about one job."""
    text, bar = "", None
    if job.status == "queued":
        text = f"position {position} in the queue" if position else "queued"
    elif job.status == "running":
        ran, beat = _seconds_since(job.started_at), _seconds_since(job.heartbeat_at)
        text = (f"running {duration(ran or 0)}, attempt {job.attempts} of {job.max_attempts}"
                + (f", heartbeat {duration(beat)} ago" if beat is not None else ""))
        reported = (job.result or {}).get("progress") if isinstance(job.result, dict) else None
        if isinstance(reported, dict) and isinstance(reported.get("total"), int) and reported["total"] > 0:
            bar = {"stage": str(reported.get("stage", "")), "done": int(reported.get("done") or 0),
                   "total": reported["total"]}
    elif job.started_at and job.finished_at:
        ran = (job.finished_at - job.started_at).total_seconds()
        text = f"took {duration(ran)}" + (f" over {job.attempts} attempts" if job.attempts > 1 else "")
    return {"text": text, "bar": bar}


def job_rows(request: Request) -> dict:
    params = request.query_params
    status, job_type = params.get("status", ""), params.get("type", "")
    limit = page_number(params.get("limit"), "limit", low=1, high=500) or 50
    with request.app.state.db.session() as session:
        try:
            jobs = scheduler.list_jobs(session, status=status or None, job_type=job_type or None, limit=limit)
        except SelftrainError as exc:
            raise PageError(422, str(exc)) from None
        queued = session.scalars(select(Job.id).where(Job.status == "queued")
                                 .order_by(Job.priority.desc(), Job.id).limit(1000)).all()
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    position = {job_id: i + 1 for i, job_id in enumerate(queued)}
    return dict(jobs=[dict(job=j, progress=progress(j, position.get(j.id))) for j in jobs], counts=counts,
                states=scheduler.STATES, types=scheduler.JOB_TYPES, chosen_status=status, chosen_type=job_type)


@router.get("/jobs")
async def jobs(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "jobs.html", nav="jobs", form={}, **await run_in_threadpool(job_rows, request))


@router.get("/jobs/rows")
async def rows(request: Request, who: Viewer = Depends(viewer)):
    """The table body alone, for the page's live refresh."""
    return render(request, "_job_rows.html", **await run_in_threadpool(job_rows, request))


def log_of(session, job: Job) -> dict:
    """The job's story as the database tells it, oldest first, and what it touched."""
    events = [(job.created_at, f"queued ({job.type}, priority {job.priority}, up to {job.max_attempts} attempts)")]
    if job.started_at:
        events.append((job.started_at, f"attempt {job.attempts} started on {job.worker or 'a worker'}"))
    if job.heartbeat_at and job.status == "running":
        events.append((job.heartbeat_at, f"last heartbeat; lease until {job.lease_expires_at or '–'}"))
    if job.finished_at:
        events.append((job.finished_at, job.status + (f": {job.error}" if job.error else "")))
    result = job.result if isinstance(job.result, dict) else {}
    cycle_id = result.get("cycle_id")
    if job.type == "cycle" and cycle_id is None:  # still running: find the cycle it owns
        for cycle in session.scalars(select(Cycle).order_by(Cycle.id.desc()).limit(20)):
            if ((cycle.report or {}).get("owner") or {}).get("job") == job.id:
                cycle_id = cycle.id
                break
    cycle = session.get(Cycle, cycle_id) if isinstance(cycle_id, int) else None
    run_ids = [f"cycle-{cycle.id}"] if cycle else []
    if job.type == "sft" and result.get("version"):
        run_ids.append(str(result["version"]))
    alerts = list(session.scalars(select(Alert).where(Alert.run_id.in_(run_ids)).order_by(Alert.id))) if run_ids else []
    events += [(a.created_at, f"alert {a.kind}: {a.message}") for a in alerts]
    events.sort(key=lambda e: (e[0].replace(tzinfo=timezone.utc) if e[0].tzinfo is None else e[0]))
    return dict(events=events, cycle=cycle, run_ids=run_ids)


def job_page(request: Request, job_id: int) -> dict:
    row_id(job_id, "job")
    with request.app.state.db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PageError(404, f"There is no job with id {job_id}.")
        position = None
        if job.status == "queued":
            position = session.scalar(select(func.count()).select_from(Job).where(
                Job.status == "queued", (Job.priority > job.priority) | ((Job.priority == job.priority)
                                                                          & (Job.id < job.id)))) + 1
        return dict(job=job, progress=progress(job, position), **log_of(session, job))


@router.get("/jobs/{job_id:int}")
async def job(request: Request, job_id: int, who: Viewer = Depends(viewer)):
    return render(request, "job.html", nav="jobs", **await run_in_threadpool(job_page, request, job_id))


def _int_field(form: Form, name: str, default: int, low: int, high: int) -> int:
    text = form.get(name).strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise PageError(422, f"'{name}' must be a whole number from {low} to {high}, got {text[:20]!r}.")
    return value


def submit_job(request: Request, form: Form) -> int:
    job_type = form.get("type").strip()
    text = form.get("payload").strip() or "{}"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise PageError(422, f"The payload must be a JSON object, e.g. {{\"limit\": 5}}: {exc.msg} "
                        f"at line {exc.lineno}, column {exc.colno}.") from None
    priority = _int_field(form, "priority", 0, -1000, 1000)
    attempts = _int_field(form, "max_attempts", 3, 1, 100)
    with request.app.state.db.session() as session:
        try:
            return scheduler.submit(session, job_type, payload, priority=priority, max_attempts=attempts).id
        except SelftrainError as exc:
            raise PageError(422, str(exc)) from None


@router.post("/jobs")
async def submit(request: Request, form: Form = Depends(admin_form)):
    try:
        job_id = await run_in_threadpool(submit_job, request, form)
    except PageError as exc:  # the queue again, with the sentence and what was typed
        return render(request, "jobs.html", status=exc.status, nav="jobs", error=exc.message, form=form.fields,
                      **await run_in_threadpool(job_rows, request))
    return redirect(f"/jobs/{job_id}?done=submitted")


def change(request: Request, job_id: int, action) -> None:
    row_id(job_id, "job")
    with request.app.state.db.session() as session:
        if session.get(Job, job_id) is None:
            raise PageError(404, f"There is no job with id {job_id}.")
        try:
            action(session, job_id)
        except SelftrainError as exc:
            raise PageError(409, str(exc)) from None


@router.post("/jobs/{job_id:int}/cancel")
async def cancel(request: Request, job_id: int, form: Form = Depends(admin_form)):
    await run_in_threadpool(change, request, job_id, scheduler.cancel)
    return redirect(f"/jobs/{job_id}?done=cancelled")


@router.post("/jobs/{job_id:int}/retry")
async def retry(request: Request, job_id: int, form: Form = Depends(admin_form)):
    await run_in_threadpool(change, request, job_id, scheduler.retry)
    return redirect(f"/jobs/{job_id}?done=retried")

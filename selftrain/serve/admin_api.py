"""Admin routes (admin keys only): jobs, model versions, alerts, export and import.

Jobs go through `selftrain.scheduler` (the queue's own rules: payload checks, which
states may be cancelled or retried); versions through `selftrain.registry`. After an
activation or rollback the engine is told to look at once, and swaps the model in
without a restart (see `serve/engine.py`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path as FilePath

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from selftrain.errors import SelftrainError
from selftrain.serve.auth import admin_principal
from selftrain.serve.problems import CONFLICT, FORBIDDEN, INVALID, NOT_FOUND, UNAUTHORIZED, ApiError
from selftrain.serve.schemas import (MAX_ID, AlertOut, ImportResult, JobOut, RequestModel, Text,
                                     VersionList, VersionOut, _utc)
from selftrain.store.records import summarize_feedback
from selftrain.store.schema import Alert, Interaction, Job, ModelVersion

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin_principal)],
                   responses={**UNAUTHORIZED, **FORBIDDEN, **INVALID})

JobId = Path(ge=1, le=MAX_ID)
VersionId = Path(min_length=1, max_length=64, pattern=r"^[\w.-]+$", description="e.g. v0002")
NO_NUL = r"^[^\x00]*$"


# --- jobs ---
class JobRequest(RequestModel):
    type: Text = Field(description="cycle, sft, rl, eval, hpo (or sleep, a diagnostic).")
    payload: dict = Field(default_factory=dict, description="The job type's fields; checked on submit.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first.")
    max_attempts: int = Field(3, ge=1, le=100)


def _job(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


def _find_job(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ApiError(404, f"There is no job with id {job_id}.", param="job_id")
    return job


@router.get("/jobs", response_model=list[JobOut], summary="Jobs, newest first")
def jobs(request: Request, status: str | None = Query(None, max_length=20, pattern=NO_NUL),
         type: str | None = Query(None, max_length=20, pattern=NO_NUL),
         limit: int = Query(50, ge=1, le=500)):
    from selftrain import scheduler

    with request.app.state.db.session() as session:
        return [_job(j) for j in scheduler.list_jobs(session, status=status, job_type=type, limit=limit)]


@router.post("/jobs", response_model=JobOut, status_code=201, summary="Queue a job")
def submit_job(body: JobRequest, request: Request):
    from selftrain import scheduler

    with request.app.state.db.session() as session:
        job = scheduler.submit(session, body.type, body.payload, priority=body.priority,
                               max_attempts=body.max_attempts)
        return _job(job)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def job(request: Request, job_id: int = JobId):
    with request.app.state.db.session() as session:
        return _job(_find_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={**NOT_FOUND, **CONFLICT})
def cancel_job(request: Request, job_id: int = JobId):
    from selftrain import scheduler

    with request.app.state.db.session() as session:
        _find_job(session, job_id)
        try:
            return _job(scheduler.cancel(session, job_id))
        except SelftrainError as exc:
            raise ApiError(409, str(exc)) from None


@router.post("/jobs/{job_id}/retry", response_model=JobOut, responses={**NOT_FOUND, **CONFLICT})
def retry_job(request: Request, job_id: int = JobId):
    from selftrain import scheduler

    with request.app.state.db.session() as session:
        _find_job(session, job_id)
        try:
            return _job(scheduler.retry(session, job_id))
        except SelftrainError as exc:
            raise ApiError(409, str(exc)) from None


# --- versions ---
def _versions(request: Request) -> VersionList:
    from selftrain.registry import list_versions

    with request.app.state.db.session() as session:
        versions = list_versions(session)
    active = next((v.id for v in versions if v.is_active), None)
    return VersionList(active=active, serving=request.app.state.engine.version_id,
                       versions=[VersionOut.model_validate(v, from_attributes=True) for v in versions])


@router.get("/versions", response_model=VersionList, summary="Model versions, oldest first")
def versions(request: Request):
    return _versions(request)


@router.post("/versions/{version_id}/activate", response_model=VersionList,
             responses={**NOT_FOUND, **CONFLICT}, summary="Serve a version that passed its gate")
def activate_version(request: Request, version_id: str = VersionId):
    from selftrain.registry import activate

    with request.app.state.db.session() as session:
        if session.get(ModelVersion, version_id) is None:
            raise ApiError(404, f"There is no model version {version_id!r}.", param="version_id")
        try:
            activate(session, version_id)
        except SelftrainError as exc:  # did not pass its gate, or its files are corrupted
            raise ApiError(409, str(exc)) from None
    request.app.state.engine.refresh_version()
    return _versions(request)


class RollbackRequest(RequestModel):
    to_base: bool = Field(False, description="Fall back to the base model when no older successful "
                          "version exists.")


@router.post("/versions/rollback", response_model=VersionList, responses=CONFLICT,
             summary="Go back to the previous successful version")
def rollback_version(request: Request, body: RollbackRequest | None = None):
    from selftrain.registry import rollback

    with request.app.state.db.session() as session:
        try:
            rollback(session, to_base=True) if body and body.to_base else rollback(session)
        except SelftrainError as exc:
            raise ApiError(409, str(exc)) from None
    request.app.state.engine.refresh_version()
    return _versions(request)


# --- alerts ---
@router.get("/alerts", response_model=list[AlertOut], summary="Alerts, newest first")
def alerts(request: Request, resolved: bool | None = Query(None, description="Filter by state."),
           limit: int = Query(100, ge=1, le=1000)):
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if resolved is not None:
        query = query.where(Alert.resolved.is_(resolved))
    with request.app.state.db.session() as session:
        return [AlertOut.model_validate(a, from_attributes=True) for a in session.scalars(query)]


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, responses=NOT_FOUND)
def resolve_alert(request: Request, alert_id: int = Path(ge=1, le=MAX_ID)):
    with request.app.state.db.session() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise ApiError(404, f"There is no alert with id {alert_id}.", param="alert_id")
        alert.resolved = True
        session.flush()
        return AlertOut.model_validate(alert, from_attributes=True)


# --- export / import ---
def export_line(row: Interaction) -> str:
    """One interaction in the ingest format (`selftrain ingest` reads it back)."""
    summary = summarize_feedback(row.feedback)
    feedback = {k: v for k, v in summary.__dict__.items() if v is not None}
    record = {"id": row.external_id or f"selftrain-{row.id}", "user": row.user, "category": row.category,
              "prompt": row.prompt, "entry_point": row.entry_point,
              "response": {"code": row.code, "explanation": row.explanation}, "tests": row.tests,
              "feedback": feedback or None, "model_version": row.model_version, "source": row.source,
              "created_at": _utc(row.created_at).isoformat() if row.created_at else None}
    return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n"


@router.get("/export", summary="Every interaction with its feedback, as JSONL in the ingest format",
            responses={200: {"description": "One JSON object per line.",
                             "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}})
def export(request: Request, user: str | None = Query(None, max_length=200, pattern=NO_NUL),
           after: int = Query(0, ge=0, le=MAX_ID, description="Only interactions with a larger id.")):
    db = request.app.state.db

    def lines():  # in pages, so a large store streams without sitting in memory
        last = after
        while True:
            query = (select(Interaction).options(selectinload(Interaction.feedback))
                     .where(Interaction.id > last).order_by(Interaction.id).limit(500))
            if user is not None:
                query = query.where(Interaction.user == user)
            with db.session() as session:
                rows = list(session.scalars(query))
                chunk = "".join(export_line(r) for r in rows)
            if not rows:
                return
            last = rows[-1].id
            yield chunk

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/import", response_model=ImportResult, summary="Store interactions from JSONL (all or nothing)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/x-ndjson": {
                 "schema": {"type": "string", "description": "One interaction per line, as "
                            "`selftrain ingest` reads (and /api/admin/export writes)."}}}}})
async def import_(request: Request):
    from selftrain.loop import ingest_file

    limit = int(getattr(request.app.state.settings, "serve_import_max_mb", 64)) * 2**20
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"The import is larger than {limit // 2**20} MiB; use `selftrain ingest`.")
    if not body.strip():
        raise ApiError(422, "The request body is empty: send one JSON interaction per line.", param="body")

    def ingest() -> tuple[int, int]:
        fd, name = tempfile.mkstemp(suffix=".jsonl", prefix="selftrain-import-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(body))
            try:
                return ingest_file(request.app.state.db, FilePath(name))
            except SelftrainError as exc:  # name the line, not our temporary file
                raise ApiError(422, str(exc).replace(name, "body"), param="body") from None
        finally:
            os.unlink(name)

    added, skipped = await run_in_threadpool(ingest)
    return ImportResult(added=added, skipped=skipped)

"""The persistent job queue: submit, claim with a lease, heartbeat, finish, cancel, retry.

Jobs live in the `jobs` table, so they survive every process. Higher priority runs first,
first-in-first-out within a priority (ordered by id). A worker *claims* a job by moving it
from queued to running with a lease that its heartbeats keep extending; the claim's token
(stored in `jobs.worker`) fences everything after: a heartbeat, a result or a commit from
a worker whose token is no longer on the row is refused. A job whose worker died stops
being heartbeated, and the next claim anywhere requeues it once its lease has expired
(or fails it after `max_attempts`), so it is never run by two workers at once.

Claims are compare-and-set updates (`... WHERE status = 'queued'`). On PostgreSQL the
candidate row is picked with `SELECT ... FOR UPDATE SKIP LOCKED`, so many workers on many
machines claim different jobs without waiting on each other; on SQLite the claim runs in
a BEGIN IMMEDIATE transaction (one writer at a time). Leases compare wall-clock times
written by the workers: machines sharing a queue need synchronised clocks (NTP), with
skew well under the lease.

This module knows the queue and each job type's payload fields, never what a job does:
`selftrain.worker` runs them.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from selftrain.errors import SelftrainError
from selftrain.store.db import Database
from selftrain.store.locks import hold_lock
from selftrain.store.schema import Job, utcnow

STATES = ("queued", "running", "completed", "failed", "cancelled")
QUEUE_LOCK = "selftrain.jobs"


# --- payloads ---------------------------------------------------------------------------
# Each job type's payload fields: name -> (what is expected, check). Checked at submit,
# so a bad payload is one sentence to the person submitting, not a failure hours later.

def _int(low: int):
    return f"an integer ≥ {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, high: float = math.inf):
    return (f"a number from {low:g} to {high:g}" if high < math.inf else f"a number > {low:g}",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high
            and (high < math.inf or v > low))


def _text(what: str):
    return what, lambda v: isinstance(v, str) and bool(v.strip())


def _choice(*options: str):
    return "one of " + ", ".join(repr(o) for o in options), lambda v: v in options


_BOOL = ("true or false", lambda v: isinstance(v, bool))

PAYLOADS: dict[str, dict[str, tuple]] = {
    # One learning cycle on the interactions no cycle has consumed yet.
    "cycle": {},
    # Evaluate a version ('active', 'base' or an id) on a suite; stored as an evaluation run.
    "eval": {"version": _text("a version id, 'active' or 'base'"),
             "suite": _text("'demo' or the path of a JSONL suite"), "limit": _int(0)},
    # LoRA SFT on a stored dataset snapshot; registers an (ungated) version.
    "sft": {"snapshot": _text("a dataset snapshot id"), "epochs": _int(1), "batch_size": _int(1),
            "learning_rate": _number(0.0), "lora_r": _int(1), "seed": _int(0)},
    # PPO (execution reward) or DPO from the active adapter, then the cycle's gate.
    "rl": {"method": _choice("ppo", "dpo"), "iterations": _int(1), "batch_size": _int(1),
           "max_new_tokens": _int(1)},
    # Optuna search on a snapshot (training/hpo.py); budget 0 = none.
    "hpo": {"trials": _int(1), "budget_minutes": _number(0.0, 10_000.0), "sampler": _choice("tpe", "grid"),
            "snapshot": _text("a dataset snapshot id or 'latest'"), "study": _text("a study name")},
    # Diagnostic: sleep, optionally fail. Exercises workers and leases without a model.
    "sleep": {"seconds": _number(0.0, 3600.0), "fail": _BOOL},
}
REQUIRED = {"sft": ("snapshot",)}
JOB_TYPES = tuple(PAYLOADS)


def validate_payload(job_type: str, payload: dict | None) -> dict:
    """The payload if it suits the job type; otherwise a SelftrainError naming the field."""
    if job_type not in PAYLOADS:
        raise SelftrainError(f"Unknown job type {job_type!r}; use one of: cycle, sft, rl, eval, hpo "
                             "(or sleep, a diagnostic).")
    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        raise SelftrainError(f"A job payload must be a JSON object, got {type(payload).__name__}.")
    fields = PAYLOADS[job_type]
    for name in REQUIRED.get(job_type, ()):
        if name not in payload:
            raise SelftrainError(f"A {job_type!r} job needs payload field {name!r} ({fields[name][0]}).")
    for name, value in payload.items():
        if name not in fields:
            accepted = ", ".join(repr(f) for f in fields) or "none"
            raise SelftrainError(f"A {job_type!r} job has no payload field {name!r}; it accepts: {accepted}.")
        expected, check = fields[name]
        if not check(value):
            raise SelftrainError(f"Payload field {name!r} of a {job_type!r} job must be {expected}, got {value!r}.")
    return payload


# --- submitting and managing jobs -------------------------------------------------------

def submit(session: Session, job_type: str, payload: dict | None = None, *, priority: int = 0,
           max_attempts: int = 3) -> Job:
    """Queue a job (flushed, so its id is known; committed with the caller's session)."""
    payload = validate_payload(job_type, payload)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SelftrainError(f"A job's priority must be an integer, got {priority!r}.")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise SelftrainError(f"A job's max_attempts must be an integer ≥ 1, got {max_attempts!r}.")
    job = Job(type=job_type, payload=payload, priority=priority, max_attempts=max_attempts,
              status="queued", attempts=0)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise SelftrainError(f"There is no job with id {job_id}; `selftrain jobs list` shows them.")
    return job


def list_jobs(session: Session, *, status: str | None = None, job_type: str | None = None,
              limit: int = 50) -> list[Job]:
    """Newest first."""
    if status is not None and status not in STATES:
        raise SelftrainError(f"Unknown job status {status!r}; use one of: {', '.join(STATES)}.")
    if job_type is not None and job_type not in PAYLOADS:
        raise SelftrainError(f"Unknown job type {job_type!r}; use one of: {', '.join(JOB_TYPES)}.")
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if job_type:
        query = query.where(Job.type == job_type)
    return list(session.scalars(query))


def cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job, or a running one: its worker notices at the next heartbeat and
    stops it, and the fence keeps anything it had not committed from committing."""
    job = get_job(session, job_id)
    done = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
                           .values(status="cancelled", finished_at=utcnow(), lease_expires_at=None,
                                   error="Cancelled by a user."))
    session.refresh(job)
    if done.rowcount != 1:
        raise SelftrainError(f"Job {job_id} is {job.status}; only queued or running jobs can be cancelled.")
    return job


def retry(session: Session, job_id: int) -> Job:
    """Queue a failed or cancelled job again, with a fresh budget of attempts."""
    job = get_job(session, job_id)
    done = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("failed", "cancelled")))
                           .values(status="queued", attempts=0, worker=None, lease_expires_at=None,
                                   heartbeat_at=None, started_at=None, finished_at=None,
                                   result=None, error=None))
    session.refresh(job)
    if done.rowcount != 1:
        raise SelftrainError(f"Job {job_id} is {job.status}; only failed or cancelled jobs can be retried.")
    return job


# --- the worker's side: claim, heartbeat, finish ----------------------------------------

@dataclass(frozen=True)
class Claim:
    """A job held by one worker until `finish`, a lost lease, or a cancel."""

    job_id: int
    type: str
    payload: dict
    token: str  # the value of jobs.worker while this claim holds the job
    attempt: int
    lease_s: float


class LeaseLost(SelftrainError):
    """The job was cancelled, or its lease expired and it went back to the queue."""


def worker_name(slot: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}/{slot}"


def claim(db: Database, worker: str, *, lease_s: float) -> Claim | None:
    """Take the next job (highest priority, oldest first) or None when none is queued.

    Jobs whose lease expired are requeued (or failed, out of attempts) first, in the same
    transaction: a dead worker's job becomes claimable by the next worker that asks.
    """
    with db.session() as session:
        _one_writer(session)
        now = utcnow()
        requeue_expired(session, now)
        job = session.scalars(select(Job).where(Job.status == "queued")
                              .order_by(Job.priority.desc(), Job.id).limit(1)
                              .with_for_update(skip_locked=True)).first()
        if job is None:
            return None
        token = f"{worker}#{uuid.uuid4().hex[:8]}"
        taken = session.execute(
            update(Job).where(Job.id == job.id, Job.status == "queued")  # compare-and-set
            .values(status="running", worker=token, attempts=Job.attempts + 1, started_at=now,
                    heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s),
                    finished_at=None, result=None, error=None))
        if taken.rowcount != 1:
            return None
        session.refresh(job)
        return Claim(job.id, job.type, dict(job.payload or {}), token, job.attempts, lease_s)


def _one_writer(session: Session) -> None:
    """On SQLite, make the read-then-write that follows one step (BEGIN IMMEDIATE);
    PostgreSQL needs nothing more than the row locks the queries take."""
    if session.get_bind().dialect.name == "sqlite":
        hold_lock(session, QUEUE_LOCK)


def requeue_expired(session: Session, now=None) -> list[int]:
    """Running jobs whose lease ran out: back to the queue, or failed after max_attempts."""
    now = now or utcnow()
    expired = session.execute(select(Job.id, Job.attempts, Job.max_attempts)
                              .where(Job.status == "running", Job.lease_expires_at < now)
                              .with_for_update(skip_locked=True)).all()
    for job_id, attempts, max_attempts in expired:
        if attempts < max_attempts:
            values = dict(status="queued", worker=None, lease_expires_at=None)
        else:
            values = dict(status="failed", finished_at=now, lease_expires_at=None,
                          error=f"The worker running it stopped (lease expired) on attempt "
                                f"{attempts} of {max_attempts}.")
        session.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                          Job.lease_expires_at < now).values(**values))
    return [row[0] for row in expired]


def heartbeat(db: Database, claim: Claim) -> bool:
    """Extend the lease; False when the job is no longer ours (cancelled or reclaimed)."""
    now = utcnow()
    with db.session() as session:
        done = session.execute(update(Job).where(Job.id == claim.job_id, Job.worker == claim.token,
                                                 Job.status == "running")
                               .values(heartbeat_at=now,
                                       lease_expires_at=now + timedelta(seconds=claim.lease_s)))
        return done.rowcount == 1


def assert_held(session: Session, claim: Claim) -> None:
    """Inside another transaction, refuse to go on unless the claim still holds the job.

    The row is locked (FOR UPDATE on PostgreSQL; SQLite's single writer already excludes
    everyone once the caller's transaction has written), so a cancel or requeue cannot
    slip in between this check and the caller's commit.
    """
    row = session.execute(select(Job.status, Job.worker).where(Job.id == claim.job_id)
                          .with_for_update()).one_or_none()
    if row is None or row.status != "running" or row.worker != claim.token:
        raise LeaseLost(f"Job {claim.job_id} is no longer held by this worker (it was cancelled or "
                        "its lease expired); its results were not committed.")


def finish(db: Database, claim: Claim, *, result: dict | None = None, error: str | None = None) -> bool:
    """Record success (`result`) or failure (`error`); False when the claim was lost."""
    values = dict(status="failed" if error is not None else "completed", finished_at=utcnow(),
                  lease_expires_at=None, result=result, error=None if error is None else error[:4000])
    with db.session() as session:
        done = session.execute(update(Job).where(Job.id == claim.job_id, Job.worker == claim.token,
                                                 Job.status == "running").values(**values))
        return done.rowcount == 1


def abandon(db: Database, claim: Claim, reason: str, *, count_attempt: bool = True) -> str | None:
    """The process running the job died or is shutting down: queue it again at once (not
    after the lease) while attempts remain, else fail it. Returns the new status, or None
    when the claim had already been lost. `count_attempt=False` gives the attempt back
    (a clean shutdown is not the job's fault)."""
    with db.session() as session:
        _one_writer(session)
        job = session.scalars(select(Job).where(Job.id == claim.job_id).with_for_update()).one_or_none()
        if job is None or job.status != "running" or job.worker != claim.token:
            return None
        if not count_attempt:
            job.attempts = max(0, job.attempts - 1)
        if job.attempts < job.max_attempts:
            job.status, job.worker, job.lease_expires_at = "queued", None, None
        else:
            job.status, job.finished_at, job.lease_expires_at = "failed", utcnow(), None
            job.error = f"{reason} (attempt {job.attempts} of {job.max_attempts})."
        return job.status

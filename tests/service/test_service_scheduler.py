"""The job queue on SQLite and PostgreSQL: order, payload checks, leases, fencing,
cancel and retry, and concurrent claims."""

import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select, update

from selftrain.errors import SelftrainError
from selftrain.scheduler import (LeaseLost, abandon, assert_held, cancel, claim, finish, get_job,
                                 heartbeat, list_jobs, retry, submit)
from selftrain.store.schema import Job


def queue(db, *specs):
    with db.session() as s:
        return [submit(s, t, p, priority=pr).id for t, p, pr in specs]


def test_higher_priority_first_then_first_in_first_out(db):
    ids = queue(db, ("sleep", {}, 0), ("sleep", {}, 5), ("cycle", {}, 0), ("eval", {}, 5))
    order = [claim(db, "w", lease_s=30).job_id for _ in ids]
    assert order == [ids[1], ids[3], ids[0], ids[2]]
    assert claim(db, "w", lease_s=30) is None


@pytest.mark.parametrize("job_type, payload, message", [
    ("train", {}, "Unknown job type 'train'; use one of: cycle, sft, rl, eval, hpo"),
    ("cycle", {"x": 1}, "A 'cycle' job has no payload field 'x'; it accepts: none."),
    ("sft", {}, "A 'sft' job needs payload field 'snapshot' \\(a dataset snapshot id\\)."),
    ("sft", {"snapshot": "abc", "epochs": 0}, "Payload field 'epochs' of a 'sft' job must be an integer ≥ 1, got 0."),
    ("eval", {"limit": True}, "Payload field 'limit' of a 'eval' job must be an integer ≥ 0, got True."),
    ("rl", {"method": "grpo"}, "must be one of 'ppo', 'dpo', got 'grpo'"),
    ("sleep", [1], "A job payload must be a JSON object, got list."),
])
def test_bad_submissions_are_one_sentence_and_store_nothing(db, job_type, payload, message):
    with pytest.raises(SelftrainError, match=message):
        with db.session() as s:
            submit(s, job_type, payload)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_claim_heartbeat_finish_and_the_fence(db):
    (job_id,) = queue(db, ("sleep", {"seconds": 1}, 0))
    held = claim(db, "host:1/0", lease_s=30)
    assert (held.job_id, held.attempt, held.payload) == (job_id, 1, {"seconds": 1})
    assert held.token.startswith("host:1/0#")
    assert heartbeat(db, held)
    with db.session() as s:
        assert_held(s, held)
        job = get_job(s, job_id)
        assert job.status == "running" and job.worker == held.token and job.started_at is not None
    assert finish(db, held, result={"ok": True})
    assert not heartbeat(db, held) and not finish(db, held, result={"again": True})
    with db.session() as s:
        job = get_job(s, job_id)
        assert (job.status, job.result, job.lease_expires_at) == ("completed", {"ok": True}, None)
        with pytest.raises(LeaseLost, match=f"Job {job_id} is no longer held by this worker"):
            assert_held(s, held)


def expire(db, job_id):
    """As if the worker holding the job had stopped heartbeating long ago."""
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))


def test_an_expired_lease_is_requeued_then_failed_after_max_attempts(db):
    with db.session() as s:
        job_id = submit(s, "sleep", {}, max_attempts=2).id
    first = claim(db, "a", lease_s=30)
    expire(db, job_id)
    second = claim(db, "b", lease_s=30)  # requeued and claimed again in one step
    assert second.job_id == job_id and second.attempt == 2 and second.token != first.token
    # The first worker lost the job: its heartbeat and its result are refused.
    assert not heartbeat(db, first) and not finish(db, first, result={})
    expire(db, job_id)
    assert claim(db, "c", lease_s=30) is None
    with db.session() as s:
        job = get_job(s, job_id)
        assert job.status == "failed" and job.error == "The worker running it stopped (lease expired) on attempt 2 of 2."


def test_abandon_requeues_at_once_and_a_shutdown_gives_the_attempt_back(db):
    (job_id,) = queue(db, ("sleep", {}, 0))
    held = claim(db, "a", lease_s=30)
    assert abandon(db, held, "The job's process was killed by signal SIGKILL") == "queued"
    assert abandon(db, held, "again") is None  # no longer ours
    held = claim(db, "a", lease_s=30)
    assert held.attempt == 2
    assert abandon(db, held, "The worker shut down", count_attempt=False) == "queued"
    with db.session() as s:
        assert get_job(s, job_id).attempts == 1


def test_cancel_and_retry(db):
    queued, running, done = queue(db, ("sleep", {}, 0), ("sleep", {}, 1), ("sleep", {}, 2))
    held_done = claim(db, "w", lease_s=30)
    finish(db, held_done, result={})
    held = claim(db, "w", lease_s=30)
    assert held.job_id == running
    with db.session() as s:
        cancel(s, queued)
        cancel(s, running)
    assert not heartbeat(db, held)  # the running job's worker learns at its next heartbeat
    with db.session() as s:
        with pytest.raises(LeaseLost):
            assert_held(s, held)
    for job_id, message in ((done, f"Job {done} is completed; only queued or running jobs can be cancelled."),
                            (queued, f"Job {queued} is cancelled; only queued or running jobs can be cancelled.")):
        with db.session() as s, pytest.raises(SelftrainError, match=message):
            cancel(s, job_id)
    with db.session() as s, pytest.raises(SelftrainError, match="only failed or cancelled jobs can be retried"):
        retry(s, done)
    with db.session() as s:
        job = retry(s, running)
        assert (job.status, job.attempts, job.worker, job.error) == ("queued", 0, None, None)
    with db.session() as s, pytest.raises(SelftrainError, match="There is no job with id 999"):
        cancel(s, 999)
    with db.session() as s:
        assert [j.id for j in list_jobs(s, status="queued")] == [running]
        with pytest.raises(SelftrainError, match="Unknown job status 'done'"):
            list_jobs(s, status="done")


def test_concurrent_claims_take_each_job_once(db):
    with db.session() as s:
        for _ in range(40):
            submit(s, "sleep", {})
    claimed, errors = [], []

    def drain(name):
        try:
            while (held := claim(db, name, lease_s=30)) is not None:
                claimed.append(held.job_id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40

"""The loop: queueing cycles at the threshold (once), recovering from dead processes, and
SIGKILL of the daemon or of a worker in the middle of a real cycle on the tiny model."""

import os
import signal
import socket
import time

from sqlalchemy import func, select

from selftrain.config import load_settings
from selftrain.daemon import check_for_work, enqueue_cycle
from selftrain.loop import ingest_file, interaction_count, recover_interrupted
from selftrain.scheduler import claim, submit
from selftrain.store.db import Database
from selftrain.store.records import record_interaction
from selftrain.store.schema import Cycle, Interaction, Job, ModelVersion

from .conftest import start_service, write_cycle_data
from .test_service_worker import wait_for


def setup(workspace):
    settings = load_settings(workspace, env={})
    return settings, Database(settings.resolved_database_url)


def add_interactions(db, n):
    with db.session() as s:
        for i in range(n):
            record_interaction(s, prompt=f"Write `f{i}`", code=f"def f{i}():\n    return {i}")


def cycle_jobs(db):
    with db.session() as s:
        return s.scalars(select(Job).where(Job.type == "cycle").order_by(Job.id)).all()


def test_a_cycle_is_queued_at_the_threshold_and_only_once(light_workspace):
    settings, db = setup(light_workspace)  # learning_threshold = 5
    add_interactions(db, 4)
    check = check_for_work(settings, db)
    assert (check.unconsumed, check.queued_job) == (4, None) and cycle_jobs(db) == []
    add_interactions(db, 1)
    check = check_for_work(settings, db)
    assert check.queued_job is not None and "queued cycle job" in check.describe()
    assert enqueue_cycle(settings, db) is None  # already queued
    held = claim(db, "w", lease_s=30)
    assert enqueue_cycle(settings, db) is None  # running
    assert "already queued or running" in check_for_work(settings, db).describe()
    assert len(cycle_jobs(db)) == 1 and held.job_id == check.queued_job


def test_recovery_fails_cycles_whose_process_died_and_removes_their_leftovers(light_workspace):
    settings, db = setup(light_workspace)
    with db.session() as s:
        job_id = submit(s, "cycle").id
    held = claim(db, "w", lease_s=30)
    dead_pid = os.fork()
    if dead_pid == 0:
        os._exit(0)
    os.waitpid(dead_pid, 0)
    host = socket.gethostname()
    with db.session() as s:
        cycles = [Cycle(status="running", report={"owner": owner}) for owner in (
            {"host": host, "pid": dead_pid},                                # a `selftrain cycle` that died
            {"host": host, "pid": os.getpid()},                             # alive: this very process
            {"host": host, "pid": 1, "job": job_id, "token": "stale#1"},    # its job moved on
            {"host": host, "pid": 1, "job": job_id, "token": held.token})]  # its job still holds it
        s.add_all(cycles)
        s.flush()
        ids = [c.id for c in cycles]
    scratch = settings.artifacts_dir / "tmp"
    for i in ids:
        (scratch / f"cycle-{i}").mkdir(parents=True)
    (settings.artifacts_dir / "versions" / "v0007").mkdir(parents=True)  # an orphan adapter folder
    result = recover_interrupted(settings, db)
    assert result["failed_cycles"] == [ids[0], ids[2]] and result["orphan_versions"] == ["v0007"]
    assert sorted(result["scratch_removed"]) == sorted([f"cycle-{ids[0]}", f"cycle-{ids[2]}"])
    with db.session() as s:
        status = {c.id: (c.status, c.error) for c in s.scalars(select(Cycle))}
    assert status[ids[0]][0] == status[ids[2]][0] == "failed"
    assert status[ids[0]][1] == f"Interrupted: the process running it (pid {dead_pid}) stopped before it committed."
    assert status[ids[1]][0] == status[ids[3]][0] == "running"
    assert recover_interrupted(settings, db) == {"failed_cycles": [], "scratch_removed": [], "orphan_versions": []}


def test_the_daemon_killed_and_restarted_queues_one_cycle(light_workspace, tmp_path):
    settings, db = setup(light_workspace)
    add_interactions(db, 6)
    loop = start_service(light_workspace, "loop", "--no-worker", "--interval", "0.2", log=tmp_path / "loop.log")
    try:
        wait_for(lambda: cycle_jobs(db), timeout=60, what="the daemon to queue a cycle")
        loop.send_signal(signal.SIGKILL)
        loop.wait(timeout=10)
        loop = start_service(light_workspace, "loop", "--no-worker", "--interval", "0.2", log=tmp_path / "loop.log")
        wait_for(lambda: "already queued or running" in (tmp_path / "loop.log").read_text(), timeout=60,
                 what="the restarted daemon's first check")
        assert len(cycle_jobs(db)) == 1 and interaction_count(db) == (6, 6)
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.wait(timeout=30)


def test_sigkill_of_a_worker_mid_cycle_loses_nothing_and_consumes_nothing_twice(workspace, tmp_path):
    """A worker runs a real cycle job on the tiny model and is SIGKILLed mid-cycle; a new
    worker recovers and, once the lease has expired, runs the job to its commit."""
    settings, db = setup(workspace)
    ingest_file(db, write_cycle_data(workspace))
    settings = load_settings(workspace, env={})
    with db.session() as s:
        job_id = submit(s, "cycle").id
    args = ("worker", "--lease-seconds", "2", "--poll-interval", "0.2")
    worker = start_service(workspace, *args, log=tmp_path / "worker.log")
    try:
        def cycle_running():
            with db.session() as s:
                return s.scalar(select(Cycle.id).where(Cycle.status == "running"))

        first_cycle = wait_for(cycle_running, timeout=120, what="the cycle to start")
        time.sleep(1.0)  # into curation and training
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert interaction_count(db) == (8, 8)
        worker = start_service(workspace, *args, log=tmp_path / "worker.log")
        wait_for(lambda: cycle_jobs(db)[0].status in ("completed", "failed"), timeout=240, what="the rerun")
        (done,) = cycle_jobs(db)
        assert done.status == "completed", done.error
        assert done.attempts == 2 and done.result["status"] == "committed"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    with db.session() as s:
        cycles = {c.id: c for c in s.scalars(select(Cycle))}
        assert cycles[first_cycle].status == "failed" and cycles[first_cycle].error.startswith("Interrupted")
        (committed,) = [c for c in cycles.values() if c.status == "committed"]
        consumers = s.execute(select(Interaction.consumed_by_cycle, func.count())
                              .group_by(Interaction.consumed_by_cycle)).all()
        assert consumers == [(committed.id, 8)]  # every interaction, once, by the committed cycle
        (version,) = s.scalars(select(ModelVersion)).all()
        assert committed.model_version_id == version.id
    assert sorted(p.name for p in (settings.artifacts_dir / "versions").iterdir()) == [version.id]
    assert not any((settings.artifacts_dir / "tmp").glob("cycle-*"))
    assert job_id == done.id


def test_the_daemon_with_a_built_in_worker_runs_what_it_queued(light_workspace):
    import threading

    from selftrain.daemon import run_loop
    from selftrain.worker import Worker

    settings, db = setup(light_workspace)
    with db.session() as s:
        job_id = submit(s, "sleep", {"seconds": 0.1}).id
    lines = []
    worker = Worker(settings, db, poll_s=0.1, lease_s=10, log=lines.append)
    run_loop(settings, db, stop=threading.Event(), worker=worker, once=True, log=lines.append)
    with db.session() as s:
        assert s.get(Job, job_id).status == "completed"
    assert lines[0] == "0/5 new interactions" and f"job {job_id} (sleep) started, attempt 1" in lines

"""Workers as real processes on SQLite: jobs run in their own process, a killed worker's
job is finished by another after its lease, a killed job process is requeued at once,
and a cancelled job stops."""

import os
import signal
import threading
import time


from selftrain.config import load_settings
from selftrain.scheduler import submit
from selftrain.store.db import Database
from selftrain.store.schema import Job
from selftrain.worker import Worker

from .conftest import start_service


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job(db, job_id) -> Job:
    with db.session() as s:
        return s.get(Job, job_id)


def runs(settings):
    """Lines of the sleep job's log: (event, job, attempt, pid)."""
    log = settings.artifacts_dir / "diagnostics" / "sleep.log"
    if not log.exists():
        return []
    return [tuple(int(x) if x.isdigit() else x for x in line.split()[:4]) for line in log.read_text().splitlines()]


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as dead
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def assert_ran_to_the_end_once(events, job_id, first, attempts):
    """The attempt whose process was killed never finished; exactly one attempt (the
    last) did, and it started after the killed one. (Under heavy load an attempt can also
    lose its lease while its process is still starting; it then stops before any work.)"""
    starts = [e for e in events if e[0] == "start" and e[1] == job_id]
    ends = [e for e in events if e[0] == "end" and e[1] == job_id]
    assert len(ends) == 1 and ends[0][2] == attempts >= 2
    assert starts[0] == first and starts[-1][2] == attempts and not any(e[3] == first[3] for e in ends)


def setup(workspace):
    settings = load_settings(workspace, env={})
    return settings, Database(settings.resolved_database_url)


def test_a_worker_runs_each_job_in_a_process_and_records_the_outcome(light_workspace):
    settings, db = setup(light_workspace)
    with db.session() as s:
        ok = submit(s, "sleep", {"seconds": 0.1}).id
        bad = submit(s, "sleep", {"fail": True}).id
        hpo = submit(s, "hpo", {"trials": 2, "snapshot": "latest"}).id
    lines = []
    Worker(settings, db, concurrency=2, poll_s=0.1, lease_s=5, log=lines.append).run(
        threading.Event(), exit_when_idle=True)
    assert job(db, ok).status == "completed" and job(db, ok).result["slept"] == 0.1
    assert job(db, ok).result["pid"] != os.getpid()  # ran in a process of its own
    assert job(db, bad).status == "failed" and job(db, bad).error == f"Sleep job {bad} failed on purpose (payload 'fail')."
    assert job(db, hpo).status == "failed"  # the search needs a dataset snapshot; there is none
    assert "snapshot" in job(db, hpo).error
    assert all(job(db, j).attempts == 1 for j in (ok, bad, hpo))


def test_a_killed_worker_s_job_is_finished_by_another_after_its_lease(light_workspace, tmp_path):
    settings, db = setup(light_workspace)
    workers = [start_service(light_workspace, "worker", "--lease-seconds", "3", "--poll-interval", "0.2",
                             log=tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        with db.session() as s:
            job_id = submit(s, "sleep", {"seconds": 2.5}).id
        first = wait_for(lambda: [r for r in runs(settings) if r[0] == "start"], what="the job to start")[0]
        holder = int(job(db, job_id).worker.split(":")[1].split("/")[0])
        victim = next(w for w in workers if w.pid == holder)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # The job's process dies with its worker (PDEATHSIG): it cannot run on beside the next attempt.
        wait_for(lambda: not alive(first[3]), timeout=10, what="the orphaned job process to die")
        wait_for(lambda: job(db, job_id).status == "completed", timeout=60, what="another worker to finish it")
        done = job(db, job_id)
        assert int(done.worker.split(":")[1].split("/")[0]) != holder
        assert_ran_to_the_end_once(runs(settings), job_id, first, job(db, job_id).attempts)
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_a_killed_job_process_is_requeued_at_once_and_a_cancelled_job_stops(light_workspace, tmp_path):
    settings, db = setup(light_workspace)
    worker = start_service(light_workspace, "worker", "--lease-seconds", "9", "--poll-interval", "0.2",
                           log=tmp_path / "worker.log")
    try:
        with db.session() as s:
            job_id = submit(s, "sleep", {"seconds": 1}).id
        first = wait_for(lambda: runs(settings), what="the job to start")[0]
        os.kill(first[3], signal.SIGKILL)  # e.g. the out-of-memory killer, mid-training
        # Requeued by its worker at once (not after the 9 s lease) and run again.
        wait_for(lambda: job(db, job_id).status == "completed", timeout=30, what="the rerun")
        assert job(db, job_id).attempts == 2

        with db.session() as s:
            long_id = submit(s, "sleep", {"seconds": 60}).id
        wait_for(lambda: any(r[1] == long_id for r in runs(settings)), what="the long job to start")
        pid = next(r[3] for r in runs(settings) if r[1] == long_id)
        from selftrain.scheduler import cancel

        with db.session() as s:
            cancel(s, long_id)
        # Its heartbeat (every lease/3 = 3 s) finds the job cancelled and stops the process.
        wait_for(lambda: not alive(pid), timeout=30, what="the cancelled job's process to stop")
        assert job(db, long_id).status == "cancelled"
        assert not any(r[0] == "end" and r[1] == long_id for r in runs(settings))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    text = (tmp_path / "worker.log").read_text()
    assert "was killed by signal SIGKILL; the job is queued again" in text

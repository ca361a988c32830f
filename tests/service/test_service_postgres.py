"""Scale-out on PostgreSQL: three worker processes share one queue."""

import signal
import time
from collections import Counter

import pytest
from sqlalchemy import select

from selftrain.config import load_settings
from selftrain.scheduler import submit
from selftrain.store.db import Database
from selftrain.store.schema import Job

from .conftest import start_service
from .test_service_worker import alive, assert_ran_to_the_end_once, runs, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_workspace(light_workspace, postgres_url):
    url = postgres_url
    with open(light_workspace / "selftrain.toml", "a") as fh:
        fh.write(f'database_url = "{url}"\n')
    settings = load_settings(light_workspace, env={})
    db = Database(settings.resolved_database_url)
    yield light_workspace, settings, db
    db.close()


def statuses(db):
    with db.session() as s:
        return Counter(s.scalars(select(Job.status)))


def test_three_workers_run_sixty_jobs_each_exactly_once(pg_workspace, tmp_path):
    workspace, settings, db = pg_workspace
    with db.session() as s:
        ids = [submit(s, "sleep", {"seconds": 0.05}, priority=i % 3).id for i in range(60)]
    workers = [start_service(workspace, "worker", "--concurrency", "2", "--lease-seconds", "10",
                             "--poll-interval", "0.2", log=tmp_path / f"w{i}.log") for i in range(3)]
    try:
        wait_for(lambda: statuses(db)["completed"] == 60, timeout=300, what="60 completed jobs")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
    events = runs(settings)
    assert Counter(e[1] for e in events if e[0] == "start") == Counter(ids)  # each ran once
    assert Counter(e[1] for e in events if e[0] == "end") == Counter(ids)
    with db.session() as s:
        jobs = s.scalars(select(Job)).all()
        assert all(j.status == "completed" for j in jobs)
        owners = Counter(j.worker.split(":")[1].split("/")[0] for j in jobs)
    assert len(owners) == 3  # all three workers took part


def test_a_killed_worker_s_job_is_finished_by_another_after_the_lease(pg_workspace, tmp_path):
    workspace, settings, db = pg_workspace
    workers = [start_service(workspace, "worker", "--lease-seconds", "3", "--poll-interval", "0.2",
                             log=tmp_path / f"w{i}.log") for i in range(3)]
    try:
        with db.session() as s:
            job_id = submit(s, "sleep", {"seconds": 2}).id
        first = wait_for(lambda: runs(settings), what="the job to start")[0]
        with db.session() as s:
            holder = int(s.get(Job, job_id).worker.split(":")[1].split("/")[0])
        victim = next(w for w in workers if w.pid == holder)
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        wait_for(lambda: not alive(first[3]), timeout=10, what="the job process to die with its worker")
        wait_for(lambda: statuses(db)["completed"] == 1, timeout=60, what="another worker to finish the job")
        with db.session() as s:
            attempts = s.get(Job, job_id).attempts
        assert_ran_to_the_end_once(runs(settings), job_id, first, attempts)
        last_start = [line.split() for line in (settings.artifacts_dir / "diagnostics" / "sleep.log")
                      .read_text().splitlines() if line.startswith("start")][-1]
        assert float(last_start[4]) > killed_at  # the run that finished began after the first was killed
    finally:
        for w in workers:
            w.kill()
            w.wait()

"""`selftrain worker`: claim jobs from the queue and run each in a process of its own.

A worker is a small supervisor with `concurrency` slots. For each claimed job it starts
a child process (`python -m selftrain.worker JOB TOKEN ...`) that runs the job
(`selftrain.jobs.run_job`) and records its result. Both the child and its supervisor
renew the lease, so it lives as long as they do:
- the child dies (SIGKILL, out of memory): the supervisor sees it and queues the job
  again at once (a dead supervisor's jobs are requeued by whichever worker claims next,
  once the lease has expired);
- the supervisor dies: the kernel kills its children (PR_SET_PDEATHSIG), so no orphan
  keeps running a job that another worker is about to claim;
- a renewal is refused (the job was cancelled, or requeued after its lease ran out) or
  the child has been out of touch with the database for a whole lease: the child stops
  at once (the supervisor kills it, or it kills itself).
Together with the fence every commit checks (`scheduler.assert_held`), a job never runs
in two places at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selftrain import scheduler
from selftrain.config import Settings
from selftrain.store.db import Database

EXIT_LEASE_LOST = 3
EXIT_INTERRUPTED = 130


@dataclass
class _Running:
    claim: scheduler.Claim
    process: subprocess.Popen
    slot: int
    started: float = field(default_factory=time.monotonic)
    renewed: float = field(default_factory=time.monotonic)


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGKILL us when the supervisor dies. (Done at the
    child's start rather than in a preexec_fn, which is unsafe in a threaded parent; the
    parent-pid check after it covers a supervisor that died in between.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lease still bounds the overlap
        pass


class Worker:
    """Claims and supervises up to `concurrency` jobs at a time; `step()` does one round
    (reap finished children, fill free slots) without blocking, so the loop daemon can
    host a worker in its own process."""

    def __init__(self, settings: Settings, db: Database, *, concurrency: int = 1,
                 lease_s: float | None = None, poll_s: float | None = None, max_jobs: int | None = None,
                 log: Callable[[str], None] = print):
        from selftrain.errors import SelftrainError

        if concurrency < 1:
            raise SelftrainError(f"--concurrency must be 1 or more, got {concurrency}.")
        self.settings, self.db, self.concurrency, self.log = settings, db, concurrency, log
        self.lease_s = float(lease_s or getattr(settings, "job_lease_seconds", 60.0))
        self.poll_s = float(poll_s or getattr(settings, "worker_poll_interval", 2.0))
        if self.lease_s <= 0 or self.poll_s <= 0:
            raise SelftrainError("The lease and the poll interval must be positive numbers of seconds.")
        self.max_jobs = max_jobs
        self.started_jobs = 0
        self.running: list[_Running] = []
        self._queue_empty = False

    def idle(self) -> bool:
        """Nothing running and the last claim found the queue empty (or max_jobs reached)."""
        return not self.running and (self._queue_empty or self._quota_reached())

    def _quota_reached(self) -> bool:
        return self.max_jobs is not None and self.started_jobs >= self.max_jobs

    def step(self) -> None:
        try:
            self._step()
        except Exception as exc:  # e.g. the database is unreachable for a moment: say so, retry next round
            self.log(f"worker: {type(exc).__name__}: {exc}")

    def _step(self) -> None:
        for run in [r for r in self.running if r.process.poll() is not None]:
            self.running.remove(run)
            self._reap(run)
        # The supervisor renews its children's leases too: a child still starting up (which
        # can take seconds) must not lose its job before its own heartbeats begin.
        for run in self.running:
            if time.monotonic() - run.renewed >= self.lease_s / 3:
                run.renewed = time.monotonic()
                if not scheduler.heartbeat(self.db, run.claim):  # cancelled, or no longer ours
                    run.process.kill()
        while len(self.running) < self.concurrency and not self._quota_reached():
            slot = min(set(range(self.concurrency)) - {r.slot for r in self.running})
            claim = scheduler.claim(self.db, scheduler.worker_name(slot), lease_s=self.lease_s)
            self._queue_empty = claim is None
            if claim is None:
                break
            self.started_jobs += 1
            self.running.append(_Running(claim, self._spawn(claim), slot))
            self.log(f"job {claim.job_id} ({claim.type}) started, attempt {claim.attempt}")

    def _spawn(self, claim: scheduler.Claim) -> subprocess.Popen:
        command = [sys.executable, "-m", "selftrain.worker", str(claim.job_id), claim.token,
                   str(claim.lease_s), str(self.settings.workspace.resolve()), str(os.getpid())]
        # Own session: a Ctrl-C at the terminal reaches the supervisor, which stops the
        # children in order, instead of every process at once.
        return subprocess.Popen(command, start_new_session=True)

    def _reap(self, run: _Running) -> None:
        code = run.process.returncode
        how = (f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        # A child that finished recorded its own result; otherwise the claim is still ours.
        status = scheduler.abandon(self.db, run.claim, f"The job's process {how}",
                                   count_attempt=code != EXIT_INTERRUPTED)
        if status is None:
            self.log(f"job {run.claim.job_id} finished ({how}) after {time.monotonic() - run.started:.1f}s")
            return
        self.log(f"job {run.claim.job_id}: its process {how}; the job is {status} again"
                 if status == "queued" else f"job {run.claim.job_id}: its process {how}; the job failed")
        from selftrain.loop import recover_interrupted

        recover_interrupted(self.settings, self.db)

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Interrupt the running jobs, give them `grace_s` to stop, then kill them; their
        jobs go back to the queue without counting the attempt."""
        for run in self.running:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for run in self.running:
            try:
                run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
            scheduler.abandon(self.db, run.claim, "The worker shut down", count_attempt=False)
        self.running.clear()

    def run(self, stop: threading.Event, *, exit_when_idle: bool = False) -> None:
        from selftrain.loop import recover_interrupted

        recover_interrupted(self.settings, self.db)
        try:
            while not stop.is_set():
                self.step()
                if exit_when_idle and self.idle():
                    return
                stop.wait(self.poll_s)
        finally:
            self.shutdown()


# --- the child: one job in one process --------------------------------------------------

def _heartbeats(db: Database, claim: scheduler.Claim, done: threading.Event) -> None:
    """Renew the lease every third of it. When the job is no longer ours, or the lease has
    run out without a successful renewal (another worker may hold it now), stop the
    process at once: a job must never run in two places."""
    last_ok = time.monotonic()
    while not done.wait(claim.lease_s / 3):
        try:
            ours = scheduler.heartbeat(db, claim)
        except Exception:  # the database is unreachable for now: keep trying until the lease ends
            ours = None
        if ours:
            last_ok = time.monotonic()
        elif ours is False or time.monotonic() - last_ok > claim.lease_s * 0.9:
            os._exit(EXIT_LEASE_LOST)


def run_child(job_id: int, token: str, lease_s: float, workspace: Path, parent_pid: int) -> int:
    from selftrain.config import load_settings
    from selftrain.jobs import run_job
    from selftrain.store.schema import Job

    _die_with_parent()
    if os.getppid() != parent_pid:  # the supervisor died before PDEATHSIG was armed
        return EXIT_LEASE_LOST
    settings = load_settings(workspace)
    db = Database(settings.resolved_database_url, upgrade=False)
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            return EXIT_LEASE_LOST
        claim = scheduler.Claim(job.id, job.type, dict(job.payload or {}), token, job.attempts, lease_s)
    # Renew the lease before any work: starting this process may have taken a good part of
    # it, and if it ran out meanwhile the job may already be another worker's.
    if not scheduler.heartbeat(db, claim):
        return EXIT_LEASE_LOST
    done = threading.Event()
    threading.Thread(target=_heartbeats, args=(db, claim, done), daemon=True).start()
    try:
        result = run_job(settings, db, claim)
    except KeyboardInterrupt:  # the supervisor is shutting down: not the job's fault
        return EXIT_INTERRUPTED
    except scheduler.LeaseLost:
        return EXIT_LEASE_LOST
    except BaseException as exc:  # noqa: BLE001 - any failure is the job's result
        from selftrain.errors import SelftrainError

        message = str(exc) if isinstance(exc, SelftrainError) else f"{type(exc).__name__}: {exc}"
        done.set()
        scheduler.finish(db, claim, error=message)
        return 1
    done.set()
    return 0 if scheduler.finish(db, claim, result=result) else EXIT_LEASE_LOST


if __name__ == "__main__":
    job_id, token, lease, workspace, parent = sys.argv[1:6]
    sys.exit(run_child(int(job_id), token, float(lease), Path(workspace), int(parent)))

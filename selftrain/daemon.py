"""The loop daemon (`selftrain loop`): every `check_interval` seconds it recovers from
crashes, counts unconsumed interactions, queues a cycle job at `learning_threshold`
(unless one is queued or running), and runs the post-deploy watch. Cycle jobs run in
workers (`selftrain.worker`); the daemon can host one itself. One cycle is `loop.py`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func, select

from selftrain.config import Settings
from selftrain.errors import SelftrainError
from selftrain.loop import interaction_count, recover_interrupted
from selftrain.store.db import Database
from selftrain.store.locks import hold_lock
from selftrain.store.schema import Cycle, Job


def enqueue_cycle(settings: Settings, db: Database) -> int | None:
    """Queue a cycle job unless one is queued or running already, or a cycle is running
    outside the queue; the id of the new job, or None."""
    from selftrain.scheduler import QUEUE_LOCK, submit

    with db.session() as session:
        hold_lock(session, QUEUE_LOCK)  # two daemons checking at once queue one job, not two
        busy = session.scalar(select(func.count()).select_from(Job).where(
            Job.type == "cycle", Job.status.in_(("queued", "running")))) or 0
        busy += session.scalar(select(func.count()).select_from(Cycle).where(Cycle.status == "running")) or 0
        if busy:
            return None
        return submit(session, "cycle", {}, priority=getattr(settings, "cycle_priority", 10),
                      max_attempts=getattr(settings, "job_max_attempts", 3)).id


@dataclass
class Check:
    """What one check of the daemon saw and did."""

    unconsumed: int
    threshold: int
    queued_job: int | None
    recovered: dict
    watch: str | None = None

    def describe(self) -> str:
        words = f"{self.unconsumed}/{self.threshold} new interactions"
        if self.queued_job is not None:
            words += f"; queued cycle job {self.queued_job}"
        elif self.unconsumed >= self.threshold:
            words += "; a cycle is already queued or running"
        if any(self.recovered.values()):
            words += f"; recovered {self.recovered}"
        return words + (f"; watch: {self.watch}" if self.watch else "")


def check_for_work(settings: Settings, db: Database) -> Check:
    """One tick of the daemon: recover, count, maybe queue a cycle, watch the deployment."""
    from selftrain.watch import watch_deployment

    recovered = recover_interrupted(settings, db)
    _, fresh = interaction_count(db)
    job_id = enqueue_cycle(settings, db) if fresh >= settings.learning_threshold else None
    verdict = watch_deployment(settings, db) if getattr(settings, "watch_enabled", True) else None
    return Check(fresh, settings.learning_threshold, job_id, recovered,
                 verdict.describe() if verdict else None)


def run_loop(settings: Settings, db: Database, *, stop: threading.Event, interval: float | None = None,
             worker=None, once: bool = False, log: Callable[[str], None] = print) -> None:
    """Check every `interval` seconds (default check_interval) until `stop` is set. With a
    `worker` (selftrain.worker.Worker) the same process also runs queued jobs."""
    interval = settings.check_interval if interval is None else interval
    next_check = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_check:
            try:
                log(check_for_work(settings, db).describe())
            except Exception as exc:  # a database hiccup must not end the daemon; say it and go on
                log(f"check failed: {exc if isinstance(exc, SelftrainError) else f'{type(exc).__name__}: {exc}'}")
            # --once: a single check, then (with a worker) run what is queued until the queue is empty.
            next_check = math.inf if once else time.monotonic() + interval
            if once and worker is None:
                return
        if worker is not None:
            worker.step()
            if once and worker.idle():
                return
        stop.wait(min(max(next_check - time.monotonic(), 0.0), worker.poll_s if worker else interval))

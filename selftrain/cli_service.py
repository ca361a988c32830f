"""Commands of the continuous-learning service: the job queue, workers, the loop daemon,
and the registry commands beyond list/activate.

`selftrain.cli` mounts them: `jobs_app` as `selftrain jobs`, each of `models_extra` under
`selftrain models`, and `worker`, `loop`, `rollback` as top-level commands. Until then
(and in tests) `python -m selftrain.cli_service [--workspace DIR] COMMAND` runs them.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Optional

import typer

from selftrain.cli_common import console as _console
from selftrain.cli_common import database as _db
from selftrain.cli_common import settings as _settings
from selftrain.errors import SelftrainError

jobs_app = typer.Typer(help="The job queue: submit, list, show, cancel, retry.\n\n"
                            "Examples:\n\n"
                            "  selftrain jobs submit cycle --priority 10\n\n"
                            "  selftrain jobs submit eval --payload '{\"version\": \"v0002\"}'\n\n"
                            "  selftrain jobs list --status failed",
                       no_args_is_help=True)


def _when(value, short: bool = False) -> str:
    return value.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S") if value else "-"


def _stop_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C end the command gracefully: running jobs are interrupted and
    go back to the queue."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


# --- jobs ---------------------------------------------------------------------------------

@jobs_app.command("submit")
def jobs_submit(job_type: str = typer.Argument(..., metavar="TYPE", help="cycle, sft, rl, eval or hpo (sleep: a diagnostic)."),
                payload: Optional[str] = typer.Option(None, "--payload", help="The job's fields as a JSON object."),
                priority: int = typer.Option(0, "--priority", help="Higher runs first."),
                max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Runs allowed when workers die (default 3).")):
    """Queue a job for the workers.

    Example: selftrain jobs submit sft --payload '{"snapshot": "3f2a...", "epochs": 1}'
    """
    from selftrain.scheduler import submit

    fields = None
    if payload is not None:
        try:
            fields = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise SelftrainError(f"--payload must be a JSON object, e.g. '{{\"version\": \"v0002\"}}' "
                                 f"({exc.msg} at character {exc.pos}).") from None
    settings = _settings()
    with _db(settings).session() as session:
        job = submit(session, job_type, fields, priority=priority,
                     max_attempts=max_attempts or getattr(settings, "job_max_attempts", 3))
        job_id = job.id
    typer.echo(f"Queued job {job_id} ({job_type}, priority {priority}); `selftrain worker` runs it.")


@jobs_app.command("list")
def jobs_list(status: Optional[str] = typer.Option(None, "--status", help="queued, running, completed, failed or cancelled."),
              job_type: Optional[str] = typer.Option(None, "--type", help="Only jobs of this type."),
              limit: int = typer.Option(30, "--limit", help="Most jobs shown, newest first.")):
    """Jobs, newest first."""
    from rich.table import Table

    from selftrain.scheduler import list_jobs

    settings = _settings()
    with _db(settings).session() as session:
        jobs = list_jobs(session, status=status, job_type=job_type, limit=limit)
    if not jobs:
        typer.echo("No jobs.")
        return
    table = Table("id", "type", "prio", "status", "tries", "created", "finished", "worker / error")
    for j in jobs:
        note = j.error if j.status in ("failed", "cancelled") else (j.worker or "")
        table.add_row(str(j.id), j.type, str(j.priority), j.status, f"{j.attempts}/{j.max_attempts}",
                      _when(j.created_at, short=True), _when(j.finished_at, short=True), (note or "")[:60])
    _console().print(table)


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(..., help="A job id.")):
    """One job with its payload, result or error."""
    from selftrain.scheduler import get_job

    settings = _settings()
    with _db(settings).session() as session:
        j = get_job(session, job_id)
        rows = [("job", f"{j.id} ({j.type}, priority {j.priority})"), ("status", j.status),
                ("attempts", f"{j.attempts} of {j.max_attempts}"), ("worker", j.worker or "-"),
                ("created", _when(j.created_at)), ("started", _when(j.started_at)),
                ("finished", _when(j.finished_at)), ("lease until", _when(j.lease_expires_at)),
                ("payload", json.dumps(j.payload))]
        if j.result is not None:
            rows.append(("result", json.dumps(j.result, indent=2, default=str)))
        if j.error:
            rows.append(("error", j.error))
    for name, value in rows:
        typer.echo(f"{name:<12} {value}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(..., help="A queued or running job.")):
    """Cancel a job; a running one is stopped at its next heartbeat and commits nothing."""
    from selftrain.scheduler import cancel

    settings = _settings()
    with _db(settings).session() as session:
        cancel(session, job_id)
    typer.echo(f"Job {job_id} cancelled.")


@jobs_app.command("retry")
def jobs_retry(job_id: int = typer.Argument(..., help="A failed or cancelled job.")):
    """Queue a failed or cancelled job again with a fresh budget of attempts."""
    from selftrain.scheduler import retry

    settings = _settings()
    with _db(settings).session() as session:
        retry(session, job_id)
    typer.echo(f"Job {job_id} is queued again.")


# --- worker and loop ------------------------------------------------------------------------

def worker(concurrency: int = typer.Option(1, "--concurrency", "-n", help="Jobs run at the same time (one process each)."),
           lease_seconds: Optional[float] = typer.Option(None, "--lease-seconds", help="A job's lease; a dead worker's job is requeued after it (default 60)."),
           poll_interval: Optional[float] = typer.Option(None, "--poll-interval", help="Seconds between looks at an empty queue (default 2)."),
           max_jobs: Optional[int] = typer.Option(None, "--max-jobs", help="Stop after starting this many jobs."),
           exit_when_idle: bool = typer.Option(False, "--exit-when-idle", help="Stop once the queue is empty and nothing runs.")):
    """Run queued jobs, each in its own process, until stopped (Ctrl-C or SIGTERM).

    Start as many workers as you like, on as many machines as share the database
    (PostgreSQL): each job runs once.

    Example: selftrain worker --concurrency 2
    """
    from selftrain.worker import Worker

    settings = _settings()
    db = _db(settings)
    w = Worker(settings, db, concurrency=concurrency, lease_s=lease_seconds, poll_s=poll_interval,
               max_jobs=max_jobs, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"Worker started ({concurrency} slot(s)); Ctrl-C stops it.", err=True)
    w.run(_stop_on_signals(), exit_when_idle=exit_when_idle or max_jobs is not None)


def loop(once: bool = typer.Option(False, "--once", help="Check once (and run what that queues), then exit."),
         interval: Optional[float] = typer.Option(None, "--interval", help="Seconds between checks (default: check_interval)."),
         with_worker: bool = typer.Option(True, "--worker/--no-worker", help="Also run queued jobs in this process."),
         concurrency: int = typer.Option(1, "--concurrency", "-n", help="Jobs run at the same time by the built-in worker."),
         lease_seconds: Optional[float] = typer.Option(None, "--lease-seconds", help="Lease of the built-in worker's jobs."),
         poll_interval: Optional[float] = typer.Option(None, "--poll-interval", help="Seconds between the built-in worker's looks at the queue.")):
    """The continuous-learning daemon: every check_interval, count new interactions and
    queue a learning cycle at learning_threshold; watch each new deployment and roll it
    back if users like it significantly less.

    Example: selftrain loop                 # daemon with a built-in worker
             selftrain loop --no-worker     # only schedules; `selftrain worker`s run the cycles
    """
    from selftrain.daemon import run_loop
    from selftrain.worker import Worker

    settings = _settings()
    db = _db(settings)
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    w = (Worker(settings, db, concurrency=concurrency, lease_s=lease_seconds, poll_s=poll_interval, log=log)
         if with_worker else None)
    every = settings.check_interval if interval is None else interval
    log(f"Loop started: checking every {every:g}s, a cycle at {settings.learning_threshold} new "
        f"interactions{'' if w else ' (no built-in worker)'}; Ctrl-C stops it.")
    try:
        run_loop(settings, db, stop=_stop_on_signals(), interval=interval, worker=w, once=once, log=log)
    finally:
        if w is not None:
            w.shutdown()


# --- models --------------------------------------------------------------------------------

def rollback(to_base: bool = typer.Option(False, "--to-base", help="With no older successful version, serve the base model.")):
    """Go back to the most recent successful version older than the active one.

    With none, nothing changes unless --to-base asks for the base model.

    Example: selftrain rollback
    """
    from selftrain.registry import rollback as do_rollback

    settings = _settings()
    with _db(settings).session() as session:
        version = do_rollback(session, to_base=to_base)
        name = version.id if version else None
    typer.echo(f"Rolled back: {'version ' + name if name else 'the base model'} is now serving.")


def models_show(version: str = typer.Argument(..., help="A version id such as v0002.")):
    """Everything about one version: lineage, files, data, config, metrics, gate, deployments."""
    from selftrain.registry import describe

    settings = _settings()
    with _db(settings).session() as session:
        info = describe(session, version)
    lines = [("version", info["id"] + ("  (active)" if info["active"] else "")),
             ("created", _when(info["created_at"])), ("passed gate", "yes" if info["passed_gate"] else "no"),
             ("lineage", " ← ".join([info["id"], *info["lineage"], "base"])),
             ("base model", info["base_model"]), ("adapter", info["adapter_path"]),
             ("files", f"{info['files']} ({info['size_bytes'] / 1e6:.1f} MB)"),
             ("dataset", info["dataset_snapshot"] or "-"), ("suite", info["suite"] or "-")]
    lines += [(f"metric {k}", f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in sorted(info["metrics"].items())]
    if info["gate"]:
        lines.append(("gate", "; ".join(info["gate"].get("reasons") or []) or str(info["gate"])))
    lines.append(("training", ", ".join(f"{k}={v}" for k, v in sorted(info["training_config"].items()))))
    for d in info["deployments"]:
        lines.append(("deployment", f"{_when(d['at'])} {d['previous'] or 'base'} → {d['version'] or 'base'} "
                                    f"({d['reason']}{', watch: ' + d['watch'] if d['watch'] else ''})"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        typer.echo(f"{name:<{width}}  {value}")


def models_compare(a: str = typer.Argument(..., help="The version to compare against."),
                   b: str = typer.Argument(..., help="The version compared.")):
    """Two versions metric by metric (B − A), with a paired test when both were
    evaluated on the same suite.

    Example: selftrain models compare v0001 v0002
    """
    from rich.table import Table

    from selftrain.registry import compare

    settings = _settings()
    with _db(settings).session() as session:
        result = compare(session, a, b)
    table = Table("metric", result.a, result.b, "B − A", "relative")
    for m in result.metrics:
        table.add_row(m.name, f"{m.a:.4g}", f"{m.b:.4g}", f"{m.difference:+.4g}",
                      "-" if m.relative is None else f"{m.relative:+.1%}")
    console = _console()
    console.print(table if result.metrics else f"{a} and {b} have no numeric metric in common.")
    if p := result.paired:
        console.print(f"Same suite ({p['suite']}, {p['n']} problems): only {a} passed {p['only_a_passed']}, "
                      f"only {b} passed {p['only_b_passed']}; exact McNemar p = {p['p_value']:.4g}.")


def models_verify(version: Optional[str] = typer.Argument(None, help="One version; all when left out.")):
    """Check every adapter file against the SHA-256 recorded when it was registered."""
    from selftrain.registry import files_present, get_version, list_versions, verify

    settings = _settings()
    bad = []
    with _db(settings).session() as session:
        versions = [get_version(session, version)] if version else list_versions(session)
        for v in versions:
            if not files_present(v):
                typer.echo(f"{v.id}: files gone (pruned or deleted)")
                continue
            broken = verify(v)
            typer.echo(f"{v.id}: " + (f"CORRUPTED ({', '.join(broken)})" if broken else f"ok, {len(v.file_hashes)} files"))
            if broken:
                bad.append(v.id)
    if bad:
        whose, be = ("its", "it") if len(bad) == 1 else ("their", "they")
        raise SelftrainError(f"{', '.join(bad)} failed verification: {whose} files no longer match the "
                             f"recorded SHA-256, so {be} cannot be activated.")
    if not versions:
        typer.echo("No model versions yet.")


def models_prune(keep: int = typer.Option(5, "--keep", help="Newest versions whose files are kept."),
                 dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted.")):
    """Delete the adapter files of old versions (their records stay), never the active
    version, its parent or the version a rollback would serve; and remove folders that
    crashes left without a record.

    Example: selftrain models prune --keep 3 --dry-run
    """
    from selftrain.registry import prune

    settings = _settings()
    with _db(settings).session() as session:
        report = prune(session, settings.artifacts_dir / "versions", keep=keep, dry_run=dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    if not report.removed and not report.orphans:
        typer.echo(f"Nothing to prune (protected: {', '.join(report.protected) or 'none'}).")
        return
    typer.echo(f"{verb} the files of {', '.join(report.removed) or 'no versions'}"
               + (f" and {len(report.orphans)} orphan folder(s) ({', '.join(report.orphans)})" if report.orphans else "")
               + f": {report.freed_bytes / 1e6:.1f} MB. Protected: {', '.join(report.protected) or 'none'}.")


models_extra = {"show": models_show, "compare": models_compare, "verify": models_verify, "prune": models_prune}


def _standalone() -> typer.Typer:
    """These commands on their own, with cli.py's --workspace option."""
    from selftrain import cli

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.callback()(cli._root)
    app.add_typer(jobs_app, name="jobs")
    models = typer.Typer(no_args_is_help=True)
    for name, function in models_extra.items():
        models.command(name)(function)
    app.add_typer(models, name="models")
    for function in (worker, loop, rollback):
        app.command(function.__name__)(function)
    return app


if __name__ == "__main__":
    import sys

    from selftrain import cli

    cli.app = _standalone()
    cli.main()
    sys.exit(0)

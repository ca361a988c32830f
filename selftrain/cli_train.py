"""Training commands: `selftrain alerts`, `selftrain hpo run`, `selftrain models export`.

`selftrain.cli` mounts them (`alerts` as a top-level command, `hpo_app` as `selftrain hpo`,
`export` under `selftrain models`). Until then (and in tests)
`python -m selftrain.cli_train [--workspace DIR] COMMAND` runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from selftrain.cli_common import console as _console
from selftrain.cli_common import database as _db
from selftrain.cli_common import settings as _settings
from selftrain.errors import SelftrainError

hpo_app = typer.Typer(
    help="Hyperparameter search for LoRA training (Optuna; the study lives in the project database, "
         "so several workers can share it).\n\n"
         "Examples:\n\n"
         "  selftrain hpo run --trials 20                      # TPE with pruning on the latest snapshot\n\n"
         "  selftrain hpo run --trials 8 --budget-minutes 30\n\n"
         "  selftrain hpo run --trials 324 --sampler grid      # the spec's full grid",
    no_args_is_help=True)


def alerts(limit: int = typer.Option(50, "--limit", min=1, help="Show at most this many, newest first."),
           kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind, e.g. loss_explosion, "
                                              "loss_plateau, nan_loss."),
           unresolved: bool = typer.Option(False, "--unresolved", help="Only alerts not marked resolved.")):
    """Stored alerts: training anomalies (loss explosion, plateau, NaN loss) and others, newest first.

    Example: selftrain alerts --kind loss_explosion --limit 10
    """
    from rich.table import Table
    from sqlalchemy import select

    from selftrain.store.schema import Alert

    settings = _settings()
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if kind:
        query = query.where(Alert.kind == kind)
    if unresolved:
        query = query.where(Alert.resolved.is_(False))
    with _db(settings).session() as session:
        rows = list(session.scalars(query))
    console = _console()
    if not rows:
        console.print("No alerts." if not (kind or unresolved) else "No alerts match.")
        return
    table = Table("id", "when", "kind", "run", "message", "resolved")
    for a in rows:
        table.add_row(str(a.id), a.created_at.strftime("%Y-%m-%d %H:%M:%S"), a.kind, a.run_id or "-",
                      a.message, "yes" if a.resolved else "no")
    console.print(table)


@hpo_app.command("run")
def hpo_run(trials: int = typer.Option(..., "--trials", min=1, help="Trials this process runs."),
            budget_minutes: Optional[float] = typer.Option(
                None, "--budget-minutes", help="Stop after this many minutes; a trial still running then "
                "is stopped and counted as pruned."),
            sampler: str = typer.Option("tpe", "--sampler", help="tpe (with pruning) or grid (the spec's grid)."),
            snapshot: str = typer.Option("latest", "--snapshot", help="Dataset snapshot id (or a unique "
                                         "prefix), or 'latest'."),
            study: Optional[str] = typer.Option(None, "--study", help="Study name (default: "
                                                "sft-<snapshot>-<sampler>); workers that name the same "
                                                "study share its trials."),
            seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed (leave unset when several "
                                               "workers share a study).")):
    """Search learning rate, batch size, epochs, weight decay and warmup on a dataset snapshot;
    the best configuration is stored and the next cycle trains with it.

    Example: selftrain hpo run --trials 10 --budget-minutes 60
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from selftrain.training.hpo import SAMPLERS, run_search

    if sampler not in SAMPLERS:
        raise SelftrainError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
    if budget_minutes is not None and budget_minutes <= 0:
        raise SelftrainError(f"--budget-minutes must be a positive number, got {budget_minutes}.")
    settings = _settings()
    db = _db(settings)
    console = _console()
    tasks: dict[int, int] = {}
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TimeElapsedColumn(), console=console) as bar:
        def progress(number: int, done: int, total: int) -> None:
            if number not in tasks:
                tasks[number] = bar.add_task(f"trial {number}", total=total)
            bar.update(tasks[number], completed=done, total=total)

        def on_trial(summary: dict) -> None:
            loss = summary["eval_loss"]
            params = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in summary["params"].items())
            bar.console.print(f"trial {summary['number']}: {summary['state']}, eval loss "
                              f"{'-' if loss is None else f'{loss:.4f}'} ({params})")

        result, saved = run_search(settings, db, trials=trials, budget_minutes=budget_minutes,
                                   sampler=sampler, snapshot=snapshot, study_name=study, seed=seed,
                                   on_trial=on_trial, progress=progress)
    table = Table(title=f"Study {result.study_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("trials", f"{len(result.trials)} run now; in the study {result.n_complete} complete, "
                  f"{result.n_pruned} pruned, {result.n_failed} failed")
    table.add_row("time", f"{result.seconds / 60:.1f} min" + (" (budget reached)" if result.stopped_by_budget else ""))
    if saved:
        table.add_row("best eval loss", f"{result.best_eval_loss:.4f}")
        table.add_row("best configuration", ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                                                      for k, v in saved["params"].items()))
        table.add_row("stored", f"tuned configuration {saved['id']}: the next cycle trains with it")
    else:
        table.add_row("best configuration", "none yet: no trial finished (try more trials or a longer budget)")
    console.print(table)


def export(version: str = typer.Argument(..., help="A version id such as v0002."),
           merged: bool = typer.Option(False, "--merged", help="Merge the adapter into the base model: a "
                                       "standalone safetensors checkpoint that loads without PEFT."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to create (default "
                                                 "<workspace>/exports/<version>[-merged])."),
           dtype: str = typer.Option("auto", "--dtype", help="Merged weights dtype: auto (the base "
                                     "model's), bfloat16 or float32.")):
    """Export a model version: its PEFT adapter folder, or (--merged) base and adapter as one model.

    Example: selftrain models export v0002 --merged -o ./slugify-model
    """
    from selftrain.models.base import resolve_base_model
    from selftrain.registry import get_version, verify
    from selftrain.training.export import export_adapter

    if dtype not in ("auto", "bfloat16", "float32"):
        raise SelftrainError(f"--dtype must be auto, bfloat16 or float32, got {dtype!r}.")
    settings = _settings()
    with _db(settings).session() as session:
        row = get_version(session, version)
        if broken := verify(row):
            raise SelftrainError(f"Version {row.id}'s files are missing or changed ({', '.join(broken)}); "
                                 "it cannot be exported.")
        adapter, base_model = Path(row.adapter_path), row.base_model
    target = output or settings.workspace / "exports" / (version + ("-merged" if merged else ""))
    location = resolve_base_model(base_model, settings.model_cache_dir, settings.allow_model_downloads)
    export_adapter(adapter, location, target, merged=merged, dtype=dtype)
    what = "merged model (safetensors)" if merged else "PEFT adapter"
    typer.echo(f"Exported {version} as a {what} to {target}")


def _standalone() -> typer.Typer:
    """These commands on their own, with cli.py's --workspace option."""
    from selftrain import cli

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.callback()(cli._root)
    app.command("alerts")(alerts)
    app.add_typer(hpo_app, name="hpo")
    models = typer.Typer(no_args_is_help=True)
    models.command("export")(export)
    models.command("list")(cli.models_list)  # a Typer group needs two commands to keep its name
    app.add_typer(models, name="models")
    return app


if __name__ == "__main__":
    import sys

    from selftrain import cli

    cli.app = _standalone()
    cli.main()
    sys.exit(0)

"""selftrain's command line: thin commands over the rooms that hold the logic.

Heavy libraries (torch, transformers) are imported inside the commands that need them,
so `selftrain --help` starts at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer

from selftrain.cli_common import State
from selftrain.cli_common import console as _console
from selftrain.cli_common import database as _db
from selftrain.cli_common import settings as _settings
from selftrain.errors import SelftrainError

app = typer.Typer(
    help="A code-generation agent that improves itself from its own use.\n\n"
         "Examples:\n\n"
         "  selftrain demo                       # bundled interactions → one full learning cycle\n\n"
         "  selftrain generate \"Write a function `is_even(n)`\"\n\n"
         "  selftrain feedback 1 --rating 5 --accept\n\n"
         "  selftrain ingest interactions.jsonl && selftrain cycle",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model versions: list, show, activate, rollback, compare, verify, prune.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

DEMO_INTERACTIONS = Path(__file__).resolve().parent / "resources" / "demo_interactions.jsonl"


@app.callback()
def _root(workspace: Optional[Path] = typer.Option(
        None, "--workspace", "-w", help="Workspace folder (default ./.selftrain or $SELFTRAIN_WORKSPACE).")):
    State.workspace = workspace


@app.command()
def init(force: bool = typer.Option(False, "--force", help="Overwrite an existing settings file.")):
    """Create the workspace: a commented settings file and the database.

    Example: selftrain --workspace ./ws init
    """
    from selftrain.config import CONFIG_NAME, DEFAULT_WORKSPACE, ENV_PREFIX, render_default_toml

    workspace = State.workspace or Path(os.environ.get(ENV_PREFIX + "WORKSPACE") or DEFAULT_WORKSPACE)
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / CONFIG_NAME
    if path.exists() and not force:
        typer.echo(f"{path} already exists (use --force to overwrite it).")
    else:
        path.write_text(render_default_toml(), encoding="utf-8")
        typer.echo(f"Wrote {path}")
    from selftrain.serve.keys import create_first_admin_key

    settings = _settings()
    db = _db(settings)
    key = create_first_admin_key(db)
    db.close()
    typer.echo(f"Database ready at {settings.resolved_database_url}")
    if key:
        typer.echo(f"Admin API key for `selftrain serve` (shown only now, keep it): {key}")


@app.command()
def generate(prompt: str = typer.Argument(..., help="What the code should do."),
             user: str = typer.Option("cli", help="Who is asking (stored with the interaction)."),
             tests: Optional[Path] = typer.Option(None, help="A file of assert lines that check the answer.")):
    """Answer a code request with the active model and log it as an interaction.

    Example: selftrain generate "Write a Python function `slugify(text)`"
    """
    from selftrain.agent import Agent

    test_text = _read_text(tests) if tests else None
    settings = _settings()
    db = _db(settings)
    answer = Agent(settings, db).answer([prompt], user=user, source="cli", tests=[test_text])[0]
    typer.echo(answer.generation.code)
    if answer.generation.explanation:
        typer.echo("\n" + answer.generation.explanation)
    typer.echo(f"\n[interaction {answer.interaction_id}, model {answer.model_version or 'base'}] "
               f"rate it: selftrain feedback {answer.interaction_id} --rating 1-5 --accept|--reject",
               err=True)


@app.command()
def feedback(interaction_id: int = typer.Argument(..., help="The id `generate` printed."),
             rating: Optional[int] = typer.Option(None, "--rating", help="1 (bad) to 5 (great)."),
             accept: Optional[bool] = typer.Option(None, "--accept/--reject", help="Did you use the answer?"),
             correct: Optional[Path] = typer.Option(None, "--correct", help="A file with the code it should have written."),
             comment: Optional[str] = typer.Option(None, "--comment", help="Free text.")):
    """Tell the agent how an answer was.

    Example: selftrain feedback 3 --reject --correct fixed.py --comment "off by one"
    """
    from selftrain.store.records import record_feedback

    corrected = _read_text(correct) if correct else None
    settings = _settings()
    with _db(settings).session() as session:
        record_feedback(session, interaction_id, rating=rating, accepted=accept,
                        corrected_code=corrected, comment=comment, user="cli")
    typer.echo(f"Feedback stored for interaction {interaction_id}.")


@app.command()
def ingest(file: Path = typer.Argument(..., help="JSONL of interactions with feedback and tests.")):
    """Import interactions from a JSONL file (all or nothing; already-imported ids are skipped).

    Example: selftrain ingest interactions.jsonl
    """
    from selftrain.loop import ingest_file

    settings = _settings()
    added, skipped = ingest_file(_db(settings), file)
    typer.echo(f"Imported {added} interactions from {file}" + (f" ({skipped} already present)." if skipped else "."))


@app.command()
def cycle():
    """Run one continuous-learning cycle now on the interactions no cycle has used yet.

    Example: selftrain cycle
    """
    settings = _settings()
    report = _run_cycle_with_progress(settings, _db(settings))
    _print_report(report)


@app.command()
def demo():
    """The main job: import the bundled interactions and run one full learning cycle.

    Example: selftrain --workspace ./demo-ws demo
    """
    from selftrain.loop import ingest_file, interaction_count

    settings = _settings()
    db = _db(settings)
    console = _console()
    added, skipped = ingest_file(db, DEMO_INTERACTIONS)
    total, fresh = interaction_count(db)
    console.print(f"Imported {added} demo interactions ({skipped} were already there); "
                  f"{fresh} of {total} not yet learned from.")
    report = _run_cycle_with_progress(settings, db)
    _print_report(report)


@app.command()
def simulate(
        cycles: int = typer.Option(3, min=1, help="Learning cycles to run."),
        tasks_per_cycle: int = typer.Option(0, min=0, help="Tasks users send before each cycle "
                                            "(0 = the training stream split evenly over the cycles)."),
        correction_share: float = typer.Option(1.0, min=0.0, max=1.0,
                                               help="Share of failed answers the user corrects with the reference."),
        rating_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of answers the user also rates."),
        gate_share: float = typer.Option(0.5, help="Share of held-out tasks the deployment gate evaluates on; "
                                         "the rest only measure."),
        humaneval_limit: int = typer.Option(0, min=-1, help="HumanEval problems measured after each cycle "
                                            "(0 = all 164, -1 = skip HumanEval)."),
        concurrency: int = typer.Option(8, min=1, help="Simulated users asking at the same time."),
        seed: int = typer.Option(0, help="Orders the stream, splits the held-out tasks, draws the feedback."),
        tasks: Optional[Path] = typer.Option(None, help="Task corpus JSONL (default: the bundled Acme corpus)."),
        out: Optional[Path] = typer.Option(None, help="Report folder (default: <workspace>/artifacts/simulation)."),
):
    """Simulated users send coding tasks through the API and give feedback; the real loop
    learns from them; after each cycle the model in service is measured on held-out tasks
    and HumanEval. Writes simulation.json, simulation.md and simulation.png.

    Example: selftrain --workspace ./sim-ws simulate --cycles 3
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from selftrain.simulate import ACME_TASKS, SimulationConfig, markdown
    from selftrain.simulate import simulate as run_simulation

    settings = _settings()
    db = _db(settings)
    config = SimulationConfig(cycles=cycles, tasks_per_cycle=tasks_per_cycle, correction_share=correction_share,
                              rating_share=rating_share, gate_share=gate_share, humaneval_limit=humaneval_limit,
                              concurrency=concurrency, seed=seed, tasks_path=tasks or ACME_TASKS)
    config.check()
    out_dir = out or settings.artifacts_dir / "simulation"
    stages: dict[str, int] = {}
    console = _console()
    started = time.monotonic()
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        def progress(stage: str, done: int, total: int) -> None:
            if stage not in stages:
                stages[stage] = bar.add_task(stage[:44], total=total)
            elif not console.is_terminal and done >= total:  # a log file gets one line per finished stage
                print(f"[{(time.monotonic() - started) / 60:5.1f} min] {stage}: {done}/{total}", flush=True)
            bar.update(stages[stage], completed=done, total=total)

        report = run_simulation(settings, db, config, out_dir, progress=progress)
    typer.echo(markdown(report.to_json(), None))
    typer.echo(f"Report: {out_dir / 'simulation.md'} (data: simulation.json, plot: simulation.png)")


@models_app.command("list")
def models_list():
    """Every model version with its metrics; * marks the active one."""
    from rich.table import Table

    from selftrain.registry import list_versions

    settings = _settings()
    with _db(settings).session() as session:
        versions = list_versions(session)
    table = Table("", "version", "created", "parent", "passed gate", "pass rate", "baseline", "eval loss")
    for v in versions:
        m = v.metrics or {}
        table.add_row("*" if v.is_active else "", v.id, v.created_at.strftime("%Y-%m-%d %H:%M"),
                      v.parent_id or "base", "yes" if v.success else "no", _pct(m.get("pass_rate")),
                      _pct(m.get("baseline_pass_rate")), _num(m.get("eval_loss")))
    console = _console()
    console.print(table if versions else "No model versions yet: the base model is serving.")
    if versions and not any(v.is_active for v in versions):
        console.print("No version is active: the base model is serving.")


@models_app.command("activate")
def models_activate(version: str = typer.Argument(..., help="A version id such as v0002.")):
    """Serve with a version that passed its gate."""
    from selftrain.registry import activate

    settings = _settings()
    with _db(settings).session() as session:
        activate(session, version)
    typer.echo(f"Version {version} is now active.")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SelftrainError(f"Could not read {path}: {getattr(exc, 'strerror', None) or exc}.") from None


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _run_cycle_with_progress(settings, db):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from selftrain.loop import run_cycle

    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description:<20}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=_console()) as bar:
        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return run_cycle(settings, db, progress=progress)


def _print_report(report) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"Learning cycle {report.cycle_id}: {report.status}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    cur = report.curation
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(cur.get("dropped", {}).items())) or "none"
    table.add_row("interactions", str(report.n_interactions))
    table.add_row("examples used", f"{report.n_examples} (dropped: {dropped})")
    if report.status == "committed":
        g = report.gate
        table.add_row("train loss", f"{report.train_loss:.4f} over {report.train_steps} steps")
        table.add_row("eval loss", f"{report.initial_eval_loss:.4f} → {report.eval_loss:.4f}")
        if report.rl:
            done = report.rl.get("metrics") or {}
            table.add_row(f"RL ({report.rl['method']})", report.rl.get("skipped") or ", ".join(
                f"{k.replace('_', ' ')} {v if isinstance(v, int) else _num(v)}"
                for k, v in done.items() if isinstance(v, (int, float)) and not isinstance(v, bool)))
        table.add_row(f"baseline ({report.baseline_version or 'base model'})",
                      f"pass rate {_pct(report.baseline_pass_rate)} on {g['n']} problems")
        table.add_row("candidate", f"pass rate {_pct(report.candidate_pass_rate)}")
        table.add_row("difference", f"{100 * g['mean_difference']:+.1f} points, "
                      f"{100 * g['confidence']:.0f}% CI [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]")
        table.add_row("significance", f"{g['test']} p = {g['p_value']:.4g}")
        table.add_row("decision", ("DEPLOYED" if report.deployed else "kept the model in service")
                      + f" — {report.message}")
        table.add_row("version", f"{report.version_id} ({'active' if report.deployed else 'registered, not active'})")
        table.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in report.seconds.items()))
    else:
        table.add_row("decision", report.message)
    console.print(table)


# Each room's commands live beside it and are registered here.
from selftrain import cli_rl, cli_service, cli_train
from selftrain.cli_eval import app as eval_app
from selftrain.cli_data import app as data_app
from selftrain.cli_serve import keys_app, serve

app.add_typer(data_app, name="data")
app.add_typer(cli_service.jobs_app, name="jobs")
app.command("serve")(serve)
app.add_typer(keys_app, name="keys")
train_app = typer.Typer(help="Training beyond the cycle's SFT: reinforcement learning on LoRA adapters.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
train_app.command("rl")(cli_rl.rl)
app.add_typer(eval_app, name="eval")
app.add_typer(cli_train.hpo_app, name="hpo")
app.command("alerts")(cli_train.alerts)
models_app.command("export")(cli_train.export)
app.command("worker")(cli_service.worker)
app.command("loop")(cli_service.loop)
app.command("rollback")(cli_service.rollback)
models_app.command("rollback")(cli_service.rollback)
for _name, _command in cli_service.models_extra.items():
    models_app.command(_name)(_command)


try:  # Typer 0.29 vendors its own click, whose exceptions are not click's
    from typer._click.exceptions import ClickException as _TyperClickException

    _CLICK_ERRORS: tuple = (click.ClickException, _TyperClickException)
except ImportError:
    _CLICK_ERRORS = (click.ClickException,)


def main() -> None:
    try:
        app(standalone_mode=False)
    except SelftrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (click.exceptions.Abort, typer.Abort):
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except _CLICK_ERRORS as exc:  # usage errors: click's message, usage line, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: say so in one line unless debugging
        if os.environ.get("SELFTRAIN_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} "
              "(set SELFTRAIN_DEBUG=1 to see the traceback).", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

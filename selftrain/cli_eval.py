"""`selftrain eval`: evaluate a model version on a suite and write a report.

Registered by selftrain/cli.py as `selftrain eval`; heavy imports happen inside the command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Evaluate model versions on HumanEval, the demo suite or your own JSONL suite.\n\n"
         "Examples:\n\n"
         "  selftrain eval run --suite humaneval --model base\n\n"
         "  selftrain eval run --suite demo --model v0003 --format html\n\n"
         "  selftrain eval run --suite humaneval --model active --samples 20 --temperature 0.8 --limit 40",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """A group even with one command, so `selftrain eval run` keeps its name when more commands come."""


@app.command()
def run(ctx: typer.Context,
        suite: str = typer.Option("humaneval", "--suite", "-s",
                                  help="humaneval, demo, or a JSONL file of {task_id, prompt, entry_point, tests}."),
        model: str = typer.Option("active", "--model", "-m",
                                  help="A version id (v0003), 'active' (the version in service) or 'base'."),
        workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                                 help="Workspace folder (default: selftrain's --workspace, "
                                                      "$SELFTRAIN_WORKSPACE or ./.selftrain)."),
        limit: int = typer.Option(0, "--limit", "-n", min=0, help="Only the first N problems (0 = all)."),
        samples: int = typer.Option(1, "--samples", min=1,
                                    help="Answers per problem; above 1 reports unbiased pass@k for k <= samples."),
        temperature: float = typer.Option(0.0, "--temperature", min=0.0,
                                          help="Sampling temperature for --samples > 1 (0 = greedy)."),
        prompt_style: Optional[str] = typer.Option(
            None, "--prompt-style", help="request | signature_chat | signature_completion (default: the "
                                         "suite's own; HumanEval uses signature_chat)."),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                     help="Most tokens per answer (default: the setting)."),
        report_format: str = typer.Option("md", "--format", help="Report page format: md or html."),
        out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: "
                                           "<workspace>/artifacts/reports/eval-<run id>)."),
        seed: int = typer.Option(0, "--seed", help="Seed for sampling.")):
    """Evaluate a version on a suite; store the run and write JSON, a Markdown/HTML report and plots.

    Example: selftrain eval run --suite humaneval --model base --workspace ./ws
    """
    from selftrain.config import load_settings
    from selftrain.evaluation.evaluate import EvalRequest, check_request, evaluate_and_report
    from selftrain.evaluation.suites import load_suite
    from selftrain.store.db import Database

    request = EvalRequest(suite=suite, limit=limit, prompt_style=prompt_style, samples=samples,
                          temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                          report_format=report_format, out_dir=out)
    check_request(request)
    loaded = load_suite(request.suite, request.limit, request.prompt_style)  # bad input fails before any work
    # `selftrain --workspace DIR eval run ...` gives the workspace to the root command
    settings = load_settings(workspace or ctx.find_root().params.get("workspace"))
    settings.workspace.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        label, version_id, adapter, base_model = _resolve_model(db, model, settings.base_model)
        with _progress() as progress:
            outcome = evaluate_and_report(settings, db, request, model_label=label, version_id=version_id,
                                          adapter=adapter, base_model=base_model, suite=loaded, progress=progress)
    finally:
        db.close()
    _print_summary(outcome, label)


def _resolve_model(db, model: str, default_base: str) -> tuple[str, str | None, str | None, str]:
    """(label, version id or None, adapter folder or None, base model) for --model."""
    from selftrain.errors import SelftrainError
    from selftrain.registry import active_version, get_version, verify

    if model == "base":
        return "base model", None, None, default_base
    with db.session() as session:
        version = active_version(session) if model == "active" else get_version(session, model)
        if version is None:
            return "base model (no version is active)", None, None, default_base
        if broken := verify(version):
            raise SelftrainError(f"Version {version.id} is corrupted or pruned ({', '.join(broken[:3])}"
                                 f"{', ...' if len(broken) > 3 else ''}); it cannot be evaluated.")
        return version.id, version.id, version.adapter_path, version.base_model


class _progress:
    """Rich progress bars for the harness's (stage, done, total) callbacks on a terminal; in a log
    (no terminal), a line per stage every tenth of the way."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.live = os.isatty(2)
        self.bar = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), disable=not self.live)
        self.tasks: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.bar.__enter__()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)
        tenth = 10 * done // max(total, 1)
        if not self.live and tenth > self.logged.get(stage, -1):
            self.logged[stage] = tenth
            typer.echo(f"{stage}: {done}/{total}", err=True)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _print_summary(outcome, label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    result, ci, m = outcome.result, outcome.pass_rate_ci, outcome.result.metrics()
    tested = result.tested
    table = Table(title=f"{label} on {outcome.suite.name} ({outcome.suite.prompt_style}), run {outcome.run_id}",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("pass@1" if result.temperature <= 0 else "pass rate (first sample)",
                  f"{100 * result.pass_rate:.1f}% ({sum(i.passed for i in tested)}/{len(tested)}), "
                  f"95% CI [{100 * ci.low:.1f}%, {100 * ci.high:.1f}%]")
    if result.temperature > 0:
        for k, value in m["pass_at_k"].items():
            table.add_row(f"pass@{k}", f"{100 * value:.1f}%")
    table.add_row("syntax valid", f"{100 * m['syntax_rate']:.1f}%")
    table.add_row("program ran", f"{100 * m['execution_rate']:.1f}%")
    if m["bleu"] is not None:
        table.add_row("BLEU-4", f"{m['bleu']:.3f} over {m['n_bleu']} items")
    table.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in outcome.seconds.items()))
    table.add_row("report", str(outcome.paths["report"]))
    Console().print(table)

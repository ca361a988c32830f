"""`selftrain eval run` as a user calls it, on the tiny model of conftest's workspace."""

import pytest
import typer
from typer.testing import CliRunner

from selftrain.cli_eval import app
from selftrain.errors import SelftrainError
from selftrain.store.db import Database
from selftrain.store.schema import EvaluationRun


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run from an empty folder, so a workspace that failed to arrive cannot fall back to ./.selftrain here."""
    monkeypatch.chdir(tmp_path)


def invoke(*args, root_workspace=None):
    if root_workspace is None:
        return CliRunner().invoke(app, list(args))
    # as cli.py mounts it: the workspace given to the root command, before `eval`
    root = typer.Typer()

    @root.callback()
    def _root(workspace: str = typer.Option(None, "--workspace")):
        pass

    root.add_typer(app, name="eval")
    return CliRunner().invoke(root, ["--workspace", str(root_workspace), "eval", *args])


def test_eval_run_on_the_base_model(workspace):
    result = invoke("run", "--suite", "demo", "--model", "base", "--limit", "2", "--workspace", str(workspace))
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output and "95% CI" in result.output
    report = workspace / "artifacts" / "reports" / "eval-1"
    assert {p.name for p in report.iterdir()} == {"report.json", "report.md", "pass_rate_by_version.png"}
    db = Database(f"sqlite:///{workspace / 'selftrain.db'}")
    with db.session() as session:
        (row,) = session.query(EvaluationRun).all()
        assert (row.model_version, row.suite, row.n_items) == (None, "demo", 2)
        assert row.metrics["details"]["max_new_tokens"] == 16
    db.close()


def test_workspace_from_the_root_command_and_html(workspace, tmp_path):
    out = tmp_path / "report"
    result = invoke("run", "--suite", "demo", "--model", "active", "--limit", "1", "--format", "html",
                    "--out", str(out), root_workspace=workspace)
    assert result.exit_code == 0, result.output
    assert "no version is active" in result.output and (out / "report.html").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "v0042"], "There is no model version 'v0042'"),
    (["--samples", "3"], "--samples above 1 needs a --temperature"),
    (["--format", "pdf"], "--format must be one of md, html"),
    (["--suite", "missing.jsonl"], "Could not read the evaluation suite"),
    (["--prompt-style", "fancy"], "Unknown prompt style"),
])
def test_bad_input_is_one_clear_error(workspace, args, message):
    result = invoke("run", "--suite", "demo", "--model", "base", "--workspace", str(workspace), *args)
    assert isinstance(result.exception, SelftrainError)  # cli.main prints it as one line
    assert message in str(result.exception)


def test_help_lists_examples():
    result = invoke("run", "--help")
    assert result.exit_code == 0 and "--samples" in result.output and "--temperature" in result.output

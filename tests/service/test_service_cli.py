"""The service commands: jobs, models show/compare/verify/prune, rollback --to-base."""

import pytest
from typer.testing import CliRunner

from selftrain.cli_service import _standalone
from selftrain.errors import SelftrainError
from selftrain.registry import activate
from selftrain.store.db import Database

from .conftest import add_version, run_service


@pytest.fixture
def cli(light_workspace):
    app = _standalone()

    def invoke(*args):
        result = CliRunner().invoke(app, ["--workspace", str(light_workspace), *args])
        if isinstance(result.exception, SelftrainError):
            return "error: " + str(result.exception)
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_jobs_commands(cli):
    assert cli("jobs", "submit", "sleep", "--payload", '{"seconds": 0.5}', "--priority", "3") == (
        "Queued job 1 (sleep, priority 3); `selftrain worker` runs it.\n")
    assert cli("jobs", "submit", "compile") == (
        "error: Unknown job type 'compile'; use one of: cycle, sft, rl, eval, hpo (or sleep, a diagnostic).")
    assert cli("jobs", "submit", "eval", "--payload", "{version: 1}").startswith(
        "error: --payload must be a JSON object")
    assert "sleep" in cli("jobs", "list") and "queued" in cli("jobs", "list", "--status", "queued")
    assert "payload      {\"seconds\": 0.5}" in cli("jobs", "show", "1")
    assert cli("jobs", "cancel", "1") == "Job 1 cancelled.\n"
    assert cli("jobs", "retry", "1") == "Job 1 is queued again.\n"
    assert cli("jobs", "retry", "1") == "error: Job 1 is queued; only failed or cancelled jobs can be retried."
    assert cli("jobs", "show", "7") == "error: There is no job with id 7; `selftrain jobs list` shows them."


def test_models_commands(cli, light_workspace):
    db = Database(f"sqlite:///{(light_workspace / 'selftrain.db').resolve()}")
    versions = light_workspace / "artifacts"
    versions.mkdir()
    v1 = add_version(db, versions, metrics={"pass_rate": 0.5})
    v2 = add_version(db, versions, metrics={"pass_rate": 0.75}, parent=v1)
    with db.session() as s:
        activate(s, v2)
    shown = cli("models", "show", v2)
    assert "v0002 ← v0001 ← base" in shown and "2 verified" in shown
    assert "pass_rate" in cli("models", "compare", v1, v2) and "+50.0%" in cli("models", "compare", v1, v2)
    assert cli("models", "verify") == "v0001: ok, 2 files\nv0002: ok, 2 files\n"
    (versions / "versions" / v1 / "adapter_config.json").write_text('{"r": 999}')
    assert cli("models", "verify", v1) == (
        "error: v0001 failed verification: its files no longer match the recorded SHA-256, so it "
        "cannot be activated.")
    assert cli("models", "prune", "--keep", "0", "--dry-run") == "Nothing to prune (protected: v0001, v0002).\n"
    # The version a rollback would serve is corrupted: one sentence, nothing changes.
    assert cli("rollback") == ("error: Version v0001 is corrupted: adapter_config.json no longer matches "
                               "its recorded SHA-256.")
    (versions / "versions" / v1 / "adapter_config.json").write_text("{}")
    assert cli("rollback") == "Rolled back: version v0001 is now serving.\n"
    assert cli("rollback").startswith("error: There is no successful version older than v0001")
    assert cli("rollback", "--to-base") == "Rolled back: the base model is now serving.\n"


def test_errors_are_one_line_and_exit_code_1(light_workspace):
    done = run_service(light_workspace, "jobs", "cancel", "3")
    assert done.returncode == 1
    assert done.stderr == "error: There is no job with id 3; `selftrain jobs list` shows them.\n"

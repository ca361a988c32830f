"""`selftrain data build | show | export | import` against a real workspace database."""

import json

import pytest
import typer
from typer.testing import CliRunner

from selftrain import cli
from selftrain.cli_data import app as data_app
from selftrain.errors import SelftrainError


@pytest.fixture
def run(tmp_path, monkeypatch):
    """The data commands under a root app that sets the workspace, as `selftrain --workspace` does."""
    for key in list(__import__("os").environ):
        if key.startswith("SELFTRAIN_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(cli.State, "workspace", tmp_path / "ws")
    root = typer.Typer()
    root.add_typer(data_app, name="data")

    @root.callback()
    def _root():
        pass

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(root, ["data", *args], catch_exceptions=True)

    return invoke


def test_build_show_export_import(run, tmp_path):
    from sqlalchemy import select

    from selftrain.config import load_settings
    from selftrain.loop import ingest_file
    from selftrain.store.db import Database
    from selftrain.store.schema import DatasetSnapshot

    settings = load_settings(tmp_path / "ws", env={})
    (tmp_path / "ws").mkdir()
    db = Database(settings.resolved_database_url)
    ingest_file(db, cli.DEMO_INTERACTIONS)

    result = run("build")
    assert result.exit_code == 0, result.output
    assert "Snapshot" in result.output and "balance" in result.output
    with db.session() as session:
        row = session.scalars(select(DatasetSnapshot)).one()
    assert row.n_examples == row.stats["kept"] >= 90
    assert {d["reason"] for d in row.stats["drops"]} >= {"rejected", "no endorsement"}
    assert (settings.artifacts_dir / "datasets" / f"{row.id}.stats.json").exists()

    shown = run("show", row.id[:8], "--examples", "1")
    assert shown.exit_code == 0 and row.id[:12] in shown.output and "Categories:" in shown.output

    out = tmp_path / "export.jsonl"
    assert run("export", "latest", str(out)).exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == row.n_examples and lines[0]["text"].startswith("### Instruction:\n")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(out.read_text().splitlines()[0] + "\n{oops\n")
    imported = run("import", str(bad), "--balance", "none")
    assert imported.exit_code == 0, imported.output
    assert "skipped 1 malformed of 2 lines" in imported.output and "bad.jsonl, line 2: not valid JSON" in imported.output
    strict = run("import", str(bad), "--strict")
    assert isinstance(strict.exception, SelftrainError) and "bad.jsonl, line 2" in str(strict.exception)

    missing = run("show", "ffffffff")
    assert isinstance(missing.exception, SelftrainError) and "no dataset snapshot" in str(missing.exception)

"""The command line as a user runs it: a real process, its output and exit code."""

import json
import os
import subprocess
import sys

import pytest


def selftrain(*args, workspace=None, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTRAIN_")}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "selftrain.cli"] + (["--workspace", str(workspace)] if workspace else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_does_not_import_heavy_libraries():
    code = "import sys, selftrain.cli; print(sorted(m for m in ('torch', 'transformers', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "selftrain demo" in selftrain("--help").stdout


def test_user_flow(workspace):
    fresh = workspace.parent / "fresh"
    assert "Wrote" in selftrain("init", workspace=fresh).stdout
    assert "learning_threshold = 100" in (fresh / "selftrain.toml").read_text()
    assert "already exists" in selftrain("init", workspace=fresh).stdout
    data = workspace / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "Write `f`", "response": {"code": "def f():\n    return 1"}}) + "\n")
    assert "Imported 1 interactions" in selftrain("ingest", str(data), workspace=workspace).stdout
    assert "already present" in selftrain("ingest", str(data), workspace=workspace).stdout
    fixed = workspace / "fixed.py"
    fixed.write_text("def f():\n    return 2\n")
    out = selftrain("feedback", "1", "--reject", "--rating", "2", "--correct", str(fixed), workspace=workspace)
    assert "Feedback stored for interaction 1" in out.stdout
    assert "No model versions yet" in selftrain("models", "list", workspace=workspace).stdout


def test_generate_logs_an_interaction(workspace, tiny_model_dir):
    out = selftrain("generate", "Write a function `f`", workspace=workspace)
    assert "[interaction 1, model base]" in out.stderr
    assert "Feedback stored" in selftrain("feedback", "1", "--accept", workspace=workspace).stdout


@pytest.mark.parametrize("args, message", [
    (["feedback", "42", "--rating", "5"], "error: There is no interaction with id 42."),
    (["feedback", "1", "--rating", "0"], "error: A rating must be an integer from 1 to 5, got 0."),
    (["ingest", "missing.jsonl"], "error: Could not read missing.jsonl"),
    (["rollback"], "error: No version is active"),
    (["models", "activate", "v0007"], "error: There is no model version 'v0007'"),
])
def test_bad_input_is_one_sentence_and_non_zero(workspace, args, message):
    proc = selftrain(*args, workspace=workspace, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(message) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_model_and_bad_database(workspace):
    proc = selftrain("generate", "x", workspace=workspace, env={"SELFTRAIN_BASE_MODEL": "no-such-model"}, check=False)
    assert proc.returncode == 1 and "error: Unknown model 'no-such-model'" in proc.stderr
    proc = selftrain("models", "list", workspace=workspace, check=False,
                     env={"SELFTRAIN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert proc.returncode == 1 and "error: Could not connect to the database" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_jsonl_names_file_and_line(workspace):
    bad = workspace / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    proc = selftrain("ingest", str(bad), workspace=workspace, check=False)
    assert proc.returncode == 1 and f"error: {bad}, line 2: not valid JSON" in proc.stderr


def test_usage_errors_are_clicks_message_not_a_crash(workspace):
    proc = selftrain("feedback", "abc", workspace=workspace, check=False)
    assert proc.returncode == 2 and "Invalid value for 'interaction_id'" in proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr

"""`selftrain train rl` end to end on the tiny model's workspace."""

import json

import typer
from typer.testing import CliRunner

from selftrain.cli_rl import rl
from selftrain.errors import SelftrainError


def invoke(*args):
    app = typer.Typer()
    app.command()(rl)
    return CliRunner().invoke(app, list(args))


def test_ppo_from_a_tasks_file(workspace, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "Write add(a, b).", "tests": "assert add(1, 2) == 3"}) + "\n"
                     + json.dumps({"prompt": "Write a function square(x)."}) + "\n")
    out = tmp_path / "adapter"
    result = invoke("--method", "ppo", "--workspace", str(workspace), "--tasks", str(tasks), "--reward", "heuristic",
                    "--iterations", "1", "--batch-size", "2", "--max-new-tokens", "4", "--from", "base",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "iteration   1" in result.output and (out / "adapter_config.json").exists()
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_user_errors_are_one_sentence(workspace, tmp_path):
    result = invoke("--method", "dpo", "--workspace", str(workspace), "--from", "base")
    assert isinstance(result.exception, SelftrainError) and "preference pairs" in str(result.exception)
    result = invoke("--method", "sft", "--workspace", str(workspace))
    assert isinstance(result.exception, SelftrainError) and "--method" in str(result.exception)
    result = invoke("--method", "ppo", "--workspace", str(workspace), "--from", "base")
    assert isinstance(result.exception, SelftrainError) and "--tasks" in str(result.exception)

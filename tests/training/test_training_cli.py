"""The training commands as a user runs them: their output and their one-sentence errors.

One test starts a real process (imports stay light); the others invoke the same Typer
app in-process, which spares a torch import per command."""

import os
import subprocess
import sys

import pytest

from selftrain.data.curate import Example


def examples(n):
    return [Example(i, f"Write a Python function `f{i}(x)` that returns x plus {i}.",
                    f"def f{i}(x):\n    return x + {i}", "Adds.", "math", "accepted") for i in range(n)]


class Outcome:
    def __init__(self, result):
        from selftrain.errors import SelftrainError

        self.stdout = result.stdout
        error = result.exception
        self.returncode = 1 if isinstance(error, SelftrainError) else result.exit_code
        self.stderr = f"error: {error}" if isinstance(error, SelftrainError) else ""
        if error is not None and not isinstance(error, (SelftrainError, SystemExit)):
            raise error


def selftrain_train(*args, workspace, check=True):
    from typer.testing import CliRunner

    from selftrain.cli_train import _standalone

    outcome = Outcome(CliRunner().invoke(_standalone(), ["--workspace", str(workspace), *args]))
    if check:
        assert outcome.returncode == 0, outcome.stderr
    return outcome


def test_a_real_process_imports_little_and_says_errors_in_one_sentence(workspace):
    code = ("import sys, selftrain.cli_train; "
            "print(sorted(m for m in ('torch', 'transformers', 'optuna', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTRAIN_")}
    proc = subprocess.run([sys.executable, "-m", "selftrain.cli_train", "--workspace", str(workspace),
                           "hpo", "run", "--trials", "1", "--sampler", "random"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --sampler must be one of tpe, grid, got 'random'."


def test_alerts_lists_stored_alerts(workspace):
    from selftrain.config import load_settings
    from selftrain.store.db import Database
    from selftrain.store.schema import Alert

    assert "No alerts." in selftrain_train("alerts", workspace=workspace).stdout
    db = Database(load_settings(workspace, env={}).resolved_database_url)
    with db.session() as session:
        session.add(Alert(kind="loss_plateau", message="Loss plateaued at step 40", run_id="cycle-3"))
        session.add(Alert(kind="loss_explosion", message="Loss exploded at step 7", run_id="cycle-4",
                          resolved=True))
    out = selftrain_train("alerts", workspace=workspace).stdout
    assert "loss_plateau" in out and "cycle-3" in out and "loss_explosion" in out
    out = selftrain_train("alerts", "--unresolved", workspace=workspace).stdout
    assert "loss_plateau" in out and "loss_explosion" not in out


@pytest.mark.parametrize("args, message", [
    (["hpo", "run", "--trials", "2"], "error: There are no dataset snapshots yet"),
    (["hpo", "run", "--trials", "2", "--sampler", "random"], "error: --sampler must be one of tpe, grid"),
    (["hpo", "run", "--trials", "2", "--budget-minutes", "0"], "error: --budget-minutes must be a positive"),
    (["models", "export", "v0009", "--merged"], "error: There is no model version 'v0009'"),
])
def test_bad_input_is_one_sentence(workspace, args, message):
    proc = selftrain_train(*args, workspace=workspace, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


def test_hpo_run_stores_the_best_configuration(workspace):
    from selftrain.config import load_settings
    from selftrain.data.curate import write_snapshot
    from selftrain.store.db import Database
    from selftrain.store.schema import DatasetSnapshot

    settings = load_settings(workspace, env={})
    db = Database(settings.resolved_database_url)
    digest, path = write_snapshot(examples(8), settings.artifacts_dir / "datasets")
    with db.session() as session:
        session.add(DatasetSnapshot(id=digest, path=str(path), n_examples=8, stats={}))
    out = selftrain_train("hpo", "run", "--trials", "1", "--seed", "0", workspace=workspace).stdout
    assert "trial 0: complete" in out and f"Study sft-{digest[:12]}-tpe" in out
    assert "the next cycle trains with it" in out


@pytest.fixture
def registered_version(workspace, tiny_model_dir, tmp_path):
    from selftrain.config import load_settings
    from selftrain.registry import register
    from selftrain.store.db import Database
    from selftrain.training.sft import SFTConfig, run

    settings = load_settings(workspace, env={})
    run(SFTConfig(epochs=1, batch_size=4, learning_rate=1e-2), examples(8), str(tiny_model_dir),
        tmp_path / "adapter")
    with Database(settings.resolved_database_url).session() as session:
        version = register(session, tmp_path / "adapter", settings.artifacts_dir / "versions",
                           base_model=str(tiny_model_dir), parent_id=None, dataset_snapshot_id=None,
                           training_config={}, metrics={}, eval_report={}, success=False)
        return version.id, version.adapter_path


def test_export_merged_loads_without_peft_and_matches_base_plus_adapter(workspace, tiny_model_dir,
                                                                        registered_version, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    version, adapter = registered_version
    out = selftrain_train("models", "export", version, "--merged", "--dtype", "float32", "-o",
                          str(tmp_path / "merged"), workspace=workspace).stdout
    assert f"Exported {version} as a merged model (safetensors)" in out
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()(ids).logits
        assert not torch.allclose(merged(ids).logits, plain, atol=1e-4)  # the adapter is really in it

    selftrain_train("models", "export", version, workspace=workspace)
    copied = workspace / "exports" / version
    assert sorted(p.name for p in copied.iterdir()) == sorted(os.listdir(adapter))
    again = selftrain_train("models", "export", version, workspace=workspace, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr

"""Hyperparameter search on the tiny model: a few real trials, the study in the project
database next to the project's own migrations, the best configuration stored for the
next cycle."""

import pytest

from selftrain.data.curate import Example
from selftrain.errors import SelftrainError
from selftrain.training.hpo import CHOICES, LEARNING_RATE_RANGE, SPEC_GRID, search
from selftrain.training.sft import SFTConfig


def examples(n):
    return [Example(i, f"Write a Python function `f{i}(x)` that returns x plus {i}.",
                    f"def f{i}(x):\n    return x + {i}", "Adds.", "math", "accepted") for i in range(n)]


FAST = SFTConfig(dtype="float32", eval_fraction=0.25)  # fp32: the tiny model's shapes change every step


@pytest.fixture
def db_url(tmp_path):
    from selftrain.store.db import Database

    url = f"sqlite:///{tmp_path / 'project.db'}"
    Database(url).close()  # the project's schema first, with all its migration heads
    return url


def alembic_heads(url):
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as c:
        heads = sorted(r[0] for r in c.execute(text("select version_num from alembic_version")))
        tables = set(engine.dialect.get_table_names(c))
    engine.dispose()
    return heads, tables


def test_tpe_search_shares_the_project_database(tiny_model_dir, tmp_path, db_url):
    from selftrain.store.db import Database

    heads_before, _ = alembic_heads(db_url)
    seen = []
    result = search(FAST, examples(12), str(tiny_model_dir), storage_url=db_url, study_name="s",
                    n_trials=3, work_dir=tmp_path / "work", seed=0, on_trial=seen.append)
    assert len(result.trials) == len(seen) == 3
    assert result.n_complete + result.n_pruned == 3 and result.n_complete >= 1
    assert LEARNING_RATE_RANGE[0] <= result.best_params["learning_rate"] <= LEARNING_RATE_RANGE[1]
    assert all(result.best_params[name] in values for name, values in CHOICES.items())
    assert result.best_eval_loss == min(t["eval_loss"] for t in seen if t["state"] == "complete")
    heads_after, tables = alembic_heads(db_url)
    assert heads_after == heads_before  # Optuna keeps its own revision elsewhere
    assert {"studies", "trials", "trial_intermediate_values", "optuna_alembic_version"} <= tables
    Database(db_url).close()  # the project's migrations still run
    again = search(FAST, examples(12), str(tiny_model_dir), storage_url=db_url, study_name="s",
                   n_trials=1, work_dir=tmp_path / "work", seed=1)
    assert again.n_complete + again.n_pruned + again.n_failed == 4  # the same study, continued
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_grid_sampler_draws_from_the_spec_grid(tiny_model_dir, tmp_path, db_url):
    result = search(FAST, examples(8), str(tiny_model_dir), storage_url=db_url, study_name="g",
                    n_trials=2, work_dir=tmp_path / "work", sampler="grid", seed=0)
    assert result.n_complete == 2  # the grid never prunes
    for trial in result.trials:
        assert all(trial["params"][name] in values for name, values in SPEC_GRID.items())


def test_budget_stops_the_running_trial(tiny_model_dir, tmp_path, db_url):
    result = search(FAST, examples(8), str(tiny_model_dir), storage_url=db_url, study_name="b",
                    n_trials=5, work_dir=tmp_path / "work", budget_minutes=1e-4, seed=0)
    assert result.stopped_by_budget and len(result.trials) == 1
    assert result.trials[0]["state"] == "pruned" and result.best_params is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_trials=0), "at least 1"),
    (dict(sampler="random"), "must be one of tpe, grid"),
    (dict(budget_minutes=0), "positive number of minutes"),
])
def test_bad_search_arguments(tiny_model_dir, tmp_path, db_url, kwargs, message):
    args = dict(storage_url=db_url, study_name="x", n_trials=1, work_dir=tmp_path / "w") | kwargs
    with pytest.raises(SelftrainError, match=message):
        search(FAST, examples(8), str(tiny_model_dir), **args)


def test_the_best_configuration_is_stored_for_the_next_cycle(workspace, tmp_path):
    from selftrain.config import load_settings
    from selftrain.data.curate import write_snapshot
    from selftrain.store.db import Database
    from selftrain.store.schema import DatasetSnapshot
    from selftrain.training.hpo import run_job
    from selftrain.training.tuned import apply_tuned, latest_tuned

    settings = load_settings(workspace, env={"SELFTRAIN_DTYPE": "float32"})
    db = Database(settings.resolved_database_url)
    digest, path = write_snapshot(examples(10), settings.artifacts_dir / "datasets")
    with db.session() as session:
        session.add(DatasetSnapshot(id=digest, path=str(path), n_examples=10, stats={}))
    out = run_job(settings, db, {"trials": 2, "budget_minutes": 0})
    assert out["study"] == f"sft-{digest[:12]}-tpe" and out["trials_run"] == 2 and out["tuned_id"]
    with db.session() as session:
        tuned = latest_tuned(session, settings.base_model)
        assert latest_tuned(session, "another-model") is None
    assert tuned.params == out["best_params"] and tuned.dataset_snapshot_id == digest
    config = apply_tuned(SFTConfig.from_settings(settings), tuned)
    assert (config.learning_rate, config.batch_size, config.epochs) == (
        tuned.params["learning_rate"], tuned.params["batch_size"], tuned.params["epochs"])
    assert config.lora_r == settings.lora_r  # untouched fields keep the settings' values

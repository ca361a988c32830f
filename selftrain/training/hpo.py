"""Hyperparameter search for the LoRA recipe: Optuna, with the study in the project database.

The objective is the recipe's best eval loss on a dataset snapshot's eval split (lower is
better; the split is the same for every trial). The search space is the spec's:
learning rate 1e-5…5e-4 (log scale), batch 2/4/8, epochs 1/3/5, weight decay
0/0.01/0.1, warmup 50/100/200 steps. Two samplers:
- `tpe` (default): Optuna's TPE, with median pruning — every trial reports its eval loss
  as it trains and stops early when it is worse than the median of earlier trials at
  the same point;
- `grid`: the spec's grid (learning rate 1e-5, 5e-5, 1e-4, 5e-4; 324 combinations), every
  trial run to the end, as the spec's `optimize_hyperparameters` does.

Trials report at the same points whatever their batch size: after every E training
examples (E a multiple of 8, about a quarter of an epoch), so the pruner compares
trials that have seen the same amount of data.

Optuna creates its tables (studies, trials, ...) in the project database through
`RDBStorage`, so workers on a shared PostgreSQL run trials of one study together. The
best configuration found is stored in `tuned_hyperparameters` (`tuned.py`), where the
next cycle finds it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from selftrain.errors import SelftrainError

SAMPLERS = ("tpe", "grid")
LEARNING_RATE_RANGE = (1e-5, 5e-4)
CHOICES = {"batch_size": [2, 4, 8], "epochs": [1, 3, 5], "weight_decay": [0.0, 0.01, 0.1],
           "warmup_steps": [50, 100, 200]}
SPEC_GRID = {"learning_rate": [1e-5, 5e-5, 1e-4, 5e-4], **CHOICES}  # spec's hyperparameter_search_space
OPTUNA_VERSION_TABLE = "optuna_alembic_version"


@dataclass
class HPOResult:
    study_name: str
    sampler: str
    best_params: dict | None  # None when no trial finished
    best_eval_loss: float | None
    trials: list[dict] = field(default_factory=list)  # the trials this call ran
    n_complete: int = 0  # in the whole study (other workers' trials included)
    n_pruned: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    stopped_by_budget: bool = False


def suggest(trial) -> dict:
    """One point of the search space."""
    params = {"learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True)}
    for name, values in CHOICES.items():
        params[name] = trial.suggest_categorical(name, values)
    return params


_patch_lock = threading.Lock()


@contextmanager
def _optuna_alembic_table():
    """Make Optuna keep its schema version in its own table.

    Optuna's RDBStorage records its schema revision in Alembic's default table,
    `alembic_version` — the table the project's own migrations use. In the project
    database it would read our revisions as its own and stop ("more than one head"),
    and stamping its revision there would break our migrations. Alembic takes the table
    name as an option; Optuna does not pass one, so it is supplied here while the
    storage is set up (the only time Optuna asks Alembic anything).
    """
    from alembic.migration import MigrationContext

    original = MigrationContext.__dict__["configure"]

    def configure(cls, *args, **kwargs):
        kwargs["opts"] = {"version_table": OPTUNA_VERSION_TABLE, **(kwargs.get("opts") or {})}
        return original.__func__(cls, *args, **kwargs)

    with _patch_lock:
        MigrationContext.configure = classmethod(configure)
        try:
            yield
        finally:
            MigrationContext.configure = original


def open_storage(url: str):
    """Optuna's RDBStorage on the project database."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with _optuna_alembic_table():
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:
            raise SelftrainError(f"Could not open the hyperparameter study storage at {url!r}: "
                                 f"{str(exc).strip().splitlines()[0]}.") from None


def eval_interval(n_examples: int, eval_fraction: float) -> int:
    """Training examples between two reports: a multiple of 8 (so every batch size in the
    space reaches it exactly), about a quarter of an epoch."""
    n_train = max(1, round(n_examples * (1 - eval_fraction)))
    return 8 * max(1, round(n_train / 32))


def search(base: "SFTConfig", examples: list, base_location: str, *, storage_url: str,
           study_name: str, n_trials: int, work_dir: Path, budget_minutes: float | None = None,
           sampler: str = "tpe", seed: int | None = None,
           on_trial: Callable[[dict], None] | None = None,
           progress: Callable[[int, int, int], None] | None = None) -> HPOResult:
    """Run `n_trials` trials (fewer if the budget runs out or the grid is exhausted) of the
    study `study_name`, creating it if needed; returns what the study knows afterwards.

    `on_trial(summary)` is called after each trial; `progress(trial_number, step, total)`
    during each. A running trial is stopped (and counted as pruned) when the budget ends.
    """
    import optuna

    from selftrain.training import sft

    if sampler not in SAMPLERS:
        raise SelftrainError(f"The sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
    if n_trials < 1:
        raise SelftrainError(f"The number of trials must be at least 1, got {n_trials}.")
    if budget_minutes is not None and budget_minutes <= 0:
        raise SelftrainError(f"The budget must be a positive number of minutes, got {budget_minutes}.")
    if len(examples) < 2:
        raise SelftrainError(f"The dataset snapshot has {len(examples)} example(s); a search needs at "
                             "least 2 to split into train and eval.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.monotonic()
    deadline = began + budget_minutes * 60 if budget_minutes else None
    interval = eval_interval(len(examples), base.eval_fraction)
    if sampler == "grid":
        chosen = optuna.samplers.GridSampler(SPEC_GRID, seed=seed)
        pruner = optuna.pruners.NopPruner()
    else:
        # Trials are minutes each on a CPU: start modelling after 5 random ones, not 10.
        chosen = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url),
                                sampler=chosen, pruner=pruner, direction="minimize", load_if_exists=True)
    ran: list[dict] = []
    budget_hit = threading.Event()

    def objective(trial) -> float:
        params = suggest(trial)
        config = replace(base, **params, eval_steps=max(1, interval // params["batch_size"]))
        trial.set_user_attr("eval_every_examples", interval)

        def on_step(record: dict) -> None:
            if "eval_loss" in record:
                trial.report(record["eval_loss"], record["step"] * params["batch_size"])
                if trial.should_prune():
                    raise optuna.TrialPruned()
            if deadline is not None and time.monotonic() > deadline:
                budget_hit.set()
                raise optuna.TrialPruned()

        out = work_dir / f"trial-{trial.number}-{os.getpid()}"
        try:
            result = sft.run(config, examples, base_location, out / "adapter", on_step=on_step,
                             progress=(lambda done, total: progress(trial.number, done, total)) if progress else None)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        trial.set_user_attr("initial_eval_loss", result.initial_eval_loss)
        trial.set_user_attr("seconds", result.seconds)
        return result.eval_loss

    def after_trial(study, frozen) -> None:
        summary = {"number": frozen.number, "state": frozen.state.name.lower(), "params": frozen.params,
                   "eval_loss": frozen.value if frozen.value is not None else
                   (min(frozen.intermediate_values.values()) if frozen.intermediate_values else None)}
        ran.append(summary)
        if on_trial:
            on_trial(summary)
        if budget_hit.is_set():
            study.stop()

    timeout = max(1.0, deadline - time.monotonic()) if deadline is not None else None
    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[after_trial],
                   catch=(sft.TrainingDiverged,), gc_after_trial=True)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    return HPOResult(study_name=study_name, sampler=sampler,
                     best_params=dict(best.params) if best else None,
                     best_eval_loss=best.value if best else None, trials=ran,
                     n_complete=len(complete),
                     n_pruned=sum(s == optuna.trial.TrialState.PRUNED for s in states),
                     n_failed=sum(s == optuna.trial.TrialState.FAIL for s in states),
                     seconds=time.monotonic() - began,
                     stopped_by_budget=budget_hit.is_set() or (deadline is not None and time.monotonic() >= deadline))


def run_search(settings, db, *, trials: int, budget_minutes: float | None = None, sampler: str = "tpe",
               snapshot: str = "latest", study_name: str | None = None, seed: int | None = None,
               on_trial=None, progress=None) -> tuple[HPOResult, dict | None]:
    """A search on a stored dataset snapshot (from the base model, as a fresh adapter),
    storing its best configuration for the next cycle. Returns (result, stored row as a
    dict, or None when no trial finished)."""
    from selftrain.data.snapshot import find_snapshot, load_examples
    from selftrain.models.base import resolve_base_model
    from selftrain.training.sft import SFTConfig
    from selftrain.training.tuned import store_tuned

    with db.session() as session:
        row = find_snapshot(session, snapshot)
        snapshot_id = row.id
        examples = load_examples(row)
    location = resolve_base_model(settings.base_model, settings.model_cache_dir, settings.allow_model_downloads)
    name = study_name or f"sft-{snapshot_id[:12]}-{sampler}"
    work = settings.artifacts_dir / "tmp" / f"hpo-{os.getpid()}"
    try:
        result = search(SFTConfig.from_settings(settings), examples, location,
                        storage_url=settings.resolved_database_url, study_name=name, n_trials=trials,
                        work_dir=work, budget_minutes=budget_minutes, sampler=sampler, seed=seed,
                        on_trial=on_trial, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.best_params is None:
        return result, None
    with db.session() as session:
        stored = store_tuned(session, study_name=name, sampler=sampler, base_model=settings.base_model,
                             dataset_snapshot_id=snapshot_id, params=result.best_params,
                             eval_loss=result.best_eval_loss, n_trials=result.n_complete)
        saved = {"id": stored.id, "params": stored.params, "eval_loss": stored.eval_loss}
    return result, saved


def run_job(settings, db, payload: dict) -> dict:
    """The scheduler's `hpo` job: payload {"trials", "budget_minutes" (0 = none),
    optionally "sampler", "snapshot", "study"}."""
    budget = float(payload.get("budget_minutes") or 0) or None
    result, saved = run_search(settings, db, trials=int(payload.get("trials", 1)), budget_minutes=budget,
                               sampler=payload.get("sampler", "tpe"), snapshot=payload.get("snapshot", "latest"),
                               study_name=payload.get("study"))
    return {"study": result.study_name, "best_params": result.best_params,
            "best_eval_loss": result.best_eval_loss, "trials_run": len(result.trials),
            "complete": result.n_complete, "pruned": result.n_pruned, "failed": result.n_failed,
            "tuned_id": saved["id"] if saved else None}

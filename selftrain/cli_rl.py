"""`selftrain train rl`: PPO, DPO or GRPO on the workspace's data.

`selftrain.cli` registers `rl` under its `train` group. Until then (and in tests),
`python -m selftrain.cli_rl --method ppo --workspace DIR` runs it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from selftrain.errors import SelftrainError

METHODS = ("ppo", "dpo", "grpo")
REWARDS = ("execution", "heuristic", "model", "mix")


def rl(method: str = typer.Option("ppo", "--method", help="ppo | dpo | grpo."),
       workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                                help="Workspace folder (default: selftrain's --workspace, "
                                                     "$SELFTRAIN_WORKSPACE or ./.selftrain)."),
       reward: str = typer.Option("execution", "--reward",
                                  help="PPO/GRPO reward: execution (tests pass in the sandbox), heuristic (the "
                                       "spec's), model (a reward model trained on the stored preference pairs) "
                                       "or mix (see --reward-weights)."),
       reward_weights: str = typer.Option("execution=0.6,heuristic=0.2,model=0.2", "--reward-weights",
                                          help="Weights of the parts of --reward mix, e.g. execution=1,model=1."),
       reward_model: Optional[Path] = typer.Option(None, "--reward-model",
                                                   help="A trained reward model folder (default: train one now)."),
       tasks: Optional[Path] = typer.Option(None, "--tasks", help="JSONL of {prompt, tests?} for PPO/GRPO "
                                            "(default: the stored interactions' distinct prompts and tests)."),
       start: str = typer.Option("active", "--from", help="Start from the adapter in service ('active') or "
                                 "from the bare base model ('base'). PPO and DPO only."),
       iterations: int = typer.Option(20, "--iterations", min=1, help="PPO iterations, or GRPO steps."),
       batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per PPO/GRPO rollout, "
                                      "or pairs per DPO step."),
       max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                    help="Most tokens per sampled answer (default: the setting)."),
       threads: int = typer.Option(0, "--threads", min=0, help="Torch threads (0 = one per core; 1 is often "
                                   "faster on a busy machine)."),
       out: Optional[Path] = typer.Option(None, "--out", help="Adapter folder (default: "
                                          "<workspace>/artifacts/rl/<method>-<time>).")):
    """Reinforcement learning from execution and from people: PPO, DPO or GRPO on a LoRA adapter.

    Examples:

      selftrain train rl --method ppo --reward execution --iterations 20

      selftrain train rl --method ppo --reward mix --reward-weights execution=0.7,model=0.3

      selftrain train rl --method dpo              # on the stored preference pairs

      selftrain train rl --method grpo --tasks tasks.jsonl --iterations 50
    """
    from rich.console import Console

    from selftrain.config import load_settings
    from selftrain.models.base import resolve_base_model
    from selftrain.store.db import Database

    if method not in METHODS:
        raise SelftrainError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if reward not in REWARDS:
        raise SelftrainError(f"--reward must be one of {', '.join(REWARDS)}, got {reward!r}.")
    if start not in ("active", "base"):
        raise SelftrainError(f"--from must be active or base, got {start!r}.")
    settings = load_settings(workspace or _root_workspace())
    settings.workspace.mkdir(parents=True, exist_ok=True)
    console = Console()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or settings.artifacts_dir / "rl" / f"{method}-{stamp}"
    db = Database(settings.resolved_database_url)
    try:
        base, adapter = _starting_point(db, settings, start)
        location = resolve_base_model(base, settings.model_cache_dir, settings.allow_model_downloads)
        if method == "dpo":
            from selftrain.training import dpo

            config = dpo.DPOConfig(batch_size=batch_size, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                   prompt_format=settings.prompt_format, dtype=settings.dtype, seed=settings.seed)
            result = dpo.run(config, _pairs(db), location, out, init_adapter=adapter)
            console.print(f"DPO: {result.n_train} pairs trained, held-out preference accuracy "
                          f"{result.eval_accuracy:.2f} on {result.n_eval}; adapter in {out}")
            return
        task_rows = _tasks(db, tasks)
        reward_fn = _reward(reward, reward_weights, reward_model, db, settings, location, stamp, console)
        new_tokens = max_new_tokens or settings.max_new_tokens
        if method == "grpo":
            from selftrain.training import grpo

            config = grpo.GRPOConfig(steps=iterations, batch_size=batch_size, max_new_tokens=new_tokens,
                                     num_generations=_divisor(batch_size), lora_r=settings.lora_r,
                                     lora_alpha=settings.lora_alpha, prompt_format=settings.prompt_format,
                                     dtype=settings.dtype, seed=settings.seed)
            result = grpo.run(config, task_rows, reward_fn, location, out)
            console.print(f"GRPO: {result.steps} steps; adapter in {out}")
            return
        from selftrain.training import ppo

        config = ppo.PPOConfig(iterations=iterations, batch_size=batch_size, max_new_tokens=new_tokens,
                               minibatch_size=min(4, batch_size), lora_r=settings.lora_r,
                               lora_alpha=settings.lora_alpha, prompt_format=settings.prompt_format,
                               dtype=settings.dtype, seed=settings.seed, num_threads=threads)

        def show(r: dict) -> None:
            console.print(f"iteration {r['iteration']:>3}  reward {r['reward']:.3f}  KL {r['kl']:.2f}  "
                          f"β {r['kl_coef']:.3f}  clip {r['clip_fraction']:.2f}  entropy {r['entropy']:.2f}  "
                          f"value loss {r['value_loss']:.3f}  {r['seconds']:.0f}s")

        result = ppo.run(config, task_rows, reward_fn, location, out, init_adapter=adapter, on_iteration=show)
        (out / "history.json").write_text(json.dumps(result.history, indent=2), encoding="utf-8")
        if result.stopped_early:
            console.print(f"Stopped early: {result.stopped_early}")
        console.print(f"PPO: {result.iterations} iterations; adapter in {out}")
    finally:
        db.close()


def _root_workspace() -> Optional[Path]:
    import click

    context = click.get_current_context(silent=True)
    return context.find_root().params.get("workspace") if context else None


def _divisor(batch_size: int) -> int:
    """Answers per prompt for GRPO: the largest of 4, 2 that divides the batch (at least 2)."""
    for n in (4, 2):
        if batch_size % n == 0:
            return n
    raise SelftrainError(f"--batch-size must be even for GRPO (answers are compared in groups), got {batch_size}.")


def _starting_point(db, settings, start: str) -> tuple[str, str | None]:
    """(base model, adapter folder or None) to train from."""
    if start == "base":
        return settings.base_model, None
    from selftrain.registry import active_version

    with db.session() as session:
        version = active_version(session)
        if version is None:
            return settings.base_model, None
        return version.base_model, version.adapter_path


def _pairs(db) -> list[tuple[str, str, str]]:
    from selftrain.store.records import preference_pairs

    with db.session() as session:
        return preference_pairs(session)


def _tasks(db, path: Optional[Path]) -> list[dict]:
    if path is not None:
        if not path.exists():
            raise SelftrainError(f"The tasks file {path} does not exist.")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise SelftrainError(f"Line {n} of {path} is not JSON.") from None
                if not isinstance(row, dict) or not str(row.get("prompt") or "").strip():
                    raise SelftrainError(f"Line {n} of {path} needs a non-empty 'prompt'.")
                rows.append({"prompt": row["prompt"], "tests": row.get("tests") or ""})
        return rows
    from selftrain.store.records import recent_tasks

    with db.session() as session:
        rows = recent_tasks(session)
    if not rows:
        raise SelftrainError("There are no stored interactions to draw prompts from; pass --tasks FILE.")
    return rows


def _reward(kind, weights, model_dir, db, settings, location, stamp, console):
    from selftrain.evaluation.sandbox import Sandbox
    from selftrain.training import reward

    sandbox = Sandbox(timeout_s=settings.sandbox_timeout_s, memory_mb=settings.sandbox_memory_mb,
                      workers=settings.sandbox_workers, allow_unsafe_execution=settings.allow_unsafe_execution)

    def execution(prompts, completions, **kw):
        return reward.execution_reward(prompts, completions, sandbox=sandbox, **kw)

    def learned():
        folder = model_dir
        if folder is None:
            folder = settings.artifacts_dir / "rl" / f"reward-model-{stamp}"
            result = reward.train_reward_model(_pairs(db), location, folder, reward.RewardModelConfig(
                lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, prompt_format=settings.prompt_format,
                dtype=settings.dtype, seed=settings.seed))
            console.print(f"Reward model: held-out pairwise accuracy {result.eval_accuracy:.2f} "
                          f"(untrained {result.initial_eval_accuracy:.2f}) on {result.n_eval} pairs; in {folder}")
        return reward.load_reward_model(folder)

    if kind == "execution":
        return execution
    if kind == "heuristic":
        return reward.heuristic_reward
    if kind == "model":
        return learned()
    parts = {}
    for item in filter(None, (s.strip() for s in weights.split(","))):
        name, _, value = item.partition("=")
        try:
            parts[name.strip()] = float(value)
        except ValueError:
            raise SelftrainError(f"--reward-weights needs name=number items, got {item!r}.") from None
    unknown = set(parts) - {"execution", "heuristic", "model"}
    if unknown:
        raise SelftrainError(f"--reward-weights knows execution, heuristic and model, not {', '.join(sorted(unknown))}.")
    fns = {"execution": lambda: execution, "heuristic": lambda: reward.heuristic_reward, "model": learned}
    return reward.mix_rewards([(w, fns[name]()) for name, w in parts.items() if w > 0])


if __name__ == "__main__":
    app = typer.Typer(add_completion=False)
    app.command()(rl)

    def main():
        try:
            app()
        except SelftrainError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise SystemExit(1)

    main()

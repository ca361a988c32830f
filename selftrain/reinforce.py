"""RL on top of an adapter: DPO on the stored preference pairs, or PPO with the execution
reward on the stored prompts. Shared by the learning cycle (after SFT, when the setting
`cycle_rl` asks for it and there is enough feedback) and the `rl` job (jobs.py); either
way the result is a candidate adapter that goes through the gate (gating.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from selftrain.config import Settings
from selftrain.errors import SelftrainError

METHODS = ("dpo", "ppo")


@dataclass
class Aligned:
    adapter_dir: Path
    method: str
    config: dict  # the recipe's settings, for the version's training_config
    metrics: dict
    history: list


def feedback_for(db, method: str) -> tuple[list, list]:
    """(preference pairs, tasks) RL would train on: pairs for DPO, {prompt, tests} for PPO."""
    from selftrain.store.records import preference_pairs, recent_tasks

    with db.session() as session:
        return (preference_pairs(session) if method == "dpo" else [],
                recent_tasks(session) if method == "ppo" else [])


def shortfall(method: str, pairs: list, tasks: list, min_pairs: int) -> str | None:
    """Why there is not enough feedback to train `method`, or None (the method itself is
    checked where it is chosen: the job payload in scheduler.py, the setting in config.py)."""
    if method == "dpo" and len(pairs) < min_pairs:
        return f"DPO needs at least {min_pairs} preference pairs with different answers; there are {len(pairs)}."
    if method == "ppo" and not tasks:
        return "PPO needs stored interactions to draw prompts from; there are none."
    return None


def align(settings: Settings, method: str, location: str, init_adapter: str | None, out_dir: Path, *,
          pairs: list, tasks: list, sandbox, options: dict | None = None) -> Aligned:
    """Train `method` from `init_adapter` (None: the base model) and save the adapter in
    `out_dir`. `options` overrides the recipe: batch_size, iterations and max_new_tokens (PPO)."""
    options = options or {}
    common = dict(lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, prompt_format=settings.prompt_format,
                  dtype=settings.dtype, seed=settings.seed)
    if method == "dpo":
        from selftrain.training import dpo

        config = dpo.DPOConfig(batch_size=options.get("batch_size", 2), min_pairs=settings.rl_min_pairs, **common)
        result = dpo.run(config, pairs, location, out_dir, init_adapter=init_adapter)
        metrics = {"train_loss": result.train_loss, "eval_loss": result.eval_loss,
                   "preference_accuracy": result.eval_accuracy, "train_seconds": result.seconds}
        history = result.history
    elif method == "ppo":
        from selftrain.training import ppo, reward

        config = ppo.PPOConfig(iterations=options.get("iterations", settings.rl_iterations),
                               batch_size=options.get("batch_size", 8),
                               max_new_tokens=options.get("max_new_tokens", settings.max_new_tokens), **common)
        result = ppo.run(config, tasks, lambda prompts, completions, **kw: reward.execution_reward(
            prompts, completions, sandbox=sandbox, **kw), location, out_dir, init_adapter=init_adapter)
        history = result.history
        metrics = {"iterations": result.iterations, "stopped_early": result.stopped_early,
                   "train_seconds": result.seconds, "reward": history[-1]["reward"] if history else None}
    else:
        raise SelftrainError(f"Unknown RL method {method!r}: use one of {', '.join(METHODS)}.")
    return Aligned(result.adapter_dir, method, {"method": method, **dataclasses.asdict(config)}, metrics, history)

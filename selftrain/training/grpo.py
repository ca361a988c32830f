"""GRPO recipe through TRL's `GRPOTrainer`: `run(config, tasks, reward_fn, ...) -> GRPOResult`.

GRPO needs no value head: it samples `num_generations` answers per prompt and uses each
answer's reward relative to its group as the advantage. The reward is any of our reward
functions (`reward.execution_reward` by default in the CLI); TRL passes the tasks' extra
columns (e.g. `tests`) to it by name, as our PPO does. Same LoRA setup as SFT and PPO.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from selftrain.errors import SelftrainError


@dataclass
class GRPOConfig:
    steps: int = 20  # optimizer steps
    batch_size: int = 8  # answers per step (a multiple of num_generations)
    num_generations: int = 4  # answers sampled per prompt, compared with each other
    max_new_tokens: int = 128
    temperature: float = 1.0
    learning_rate: float = 5e-5
    beta: float = 0.0  # KL to the reference; TRL's default 0 skips the reference pass
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(default_factory=list)
    prompt_format: str = "chat"
    dtype: str = "auto"  # auto: bfloat16 where the hardware has it (models/base.resolve_dtype)


@dataclass
class GRPOResult:
    adapter_dir: Path
    steps: int
    history: list[dict]  # TRL's log records (reward, kl, loss, ...)
    seconds: float


def run(config: GRPOConfig, tasks: list[dict], reward_fn: Callable[..., Sequence[float]], base_location: str,
        output_dir: Path) -> GRPOResult:
    """Train a LoRA adapter with GRPO against `reward_fn` and save it to `output_dir`."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from selftrain.models.base import load_model, lora_target_modules
    from selftrain.models.prompting import render_prompt

    if not tasks or any(not str(t.get("prompt") or "").strip() for t in tasks):
        raise SelftrainError("GRPO needs a non-empty list of tasks, each with a non-empty 'prompt'.")
    if config.batch_size % config.num_generations:
        raise SelftrainError(f"Setting 'batch_size' ({config.batch_size}) must be a multiple of "
                             f"'num_generations' ({config.num_generations}).")
    began = time.perf_counter()
    model, tokenizer = load_model(base_location, config.dtype)
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                             target_modules=config.lora_target_modules or lora_target_modules(model))
    rows = [{**t, "prompt": render_prompt(tokenizer, t["prompt"], config.prompt_format)} for t in tasks]
    raw = {r["prompt"]: t["prompt"] for r, t in zip(rows, tasks)}

    def reward(prompts, completions, **kw):
        # Our reward functions see the user's instruction, not the chat-rendered prompt.
        rewards = [float(r) for r in reward_fn([raw.get(p, p) for p in prompts], completions, **kw)]
        if len(rewards) != len(completions) or not all(math.isfinite(r) for r in rewards):
            raise SelftrainError("The reward function must return one finite number per answer; "
                                 "no adapter was saved.")
        return rewards

    reward.__name__ = getattr(reward_fn, "__name__", "reward")
    with tempfile.TemporaryDirectory(prefix="grpo-") as scratch:
        args = TRLConfig(output_dir=scratch, max_steps=config.steps, per_device_train_batch_size=config.batch_size,
                         num_generations=config.num_generations, max_completion_length=config.max_new_tokens,
                         temperature=config.temperature, learning_rate=config.learning_rate, beta=config.beta,
                         seed=config.seed, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
                         disable_tqdm=True, use_cpu=True)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, peft_config=peft_config)
        trainer.train()
        history = list(trainer.state.log_history)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir)
    return GRPOResult(adapter_dir=output_dir, steps=config.steps, history=history,
                      seconds=time.perf_counter() - began)

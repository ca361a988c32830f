"""DPO recipe on preference pairs: `run(config, pairs, base_location, output_dir) -> DPOResult`.

TRL's `DPOTrainer` does the work on the same LoRA setup as SFT: the reference policy is
the model with its adapter disabled (TRL does this itself when given a PEFT config, so
there is no second copy). Pairs are split; the held-out ones give the preference accuracy
(the share where the policy's implicit reward, β·log π/π_ref, ranks chosen above rejected).
The loss is the sigmoid DPO loss, `losses.dpo_loss`.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from selftrain.errors import SelftrainError


@dataclass
class DPOConfig:
    epochs: int = 1
    batch_size: int = 2  # pairs per optimizer step
    learning_rate: float = 5e-5
    beta: float = 0.1  # how far from the reference the policy may move; higher = closer
    max_length: int = 512  # tokens of prompt + answer
    eval_fraction: float = 0.1
    min_pairs: int = 8  # fewer preference pairs than this: refuse
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=list)
    prompt_format: str = "chat"
    dtype: str = "auto"  # weights as loaded; the trainer itself runs without autocast


@dataclass
class DPOResult:
    adapter_dir: Path
    train_loss: float
    eval_accuracy: float  # held-out pairs ranked right by the implicit reward
    eval_loss: float
    n_train: int
    n_eval: int
    seconds: float
    history: list[dict]


def run(config: DPOConfig, pairs: Sequence[tuple[str, str, str]], base_location: str, output_dir: Path,
        *, init_adapter: str | None = None) -> DPOResult:
    """Train a LoRA adapter with DPO on (prompt, chosen, rejected) pairs and save it."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from selftrain.models.base import load_model, lora_target_modules
    from selftrain.models.prompting import render_prompt

    pairs = [p for p in pairs if p[1] != p[2]]
    if len(pairs) < max(config.min_pairs, 2):
        raise SelftrainError(f"DPO needs at least {max(config.min_pairs, 2)} preference pairs with different "
                             f"answers; there are {len(pairs)}.")
    began = time.perf_counter()
    model, tokenizer = load_model(base_location, config.dtype, adapter=init_adapter, trainable_adapter=True)
    peft_config = None
    if not init_adapter:
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                                 lora_dropout=config.lora_dropout,
                                 target_modules=config.lora_target_modules or lora_target_modules(model))
    pairs = list(pairs)
    random.Random(config.seed).shuffle(pairs)
    n_eval = min(len(pairs) - 1, max(1, round(len(pairs) * config.eval_fraction)))

    def dataset(rows):
        return Dataset.from_list([{"prompt": render_prompt(tokenizer, p, config.prompt_format),
                                   "chosen": c, "rejected": r} for p, c, r in rows])

    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        args = TRLConfig(output_dir=scratch, num_train_epochs=config.epochs,
                         per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
                         learning_rate=config.learning_rate, beta=config.beta, max_length=config.max_length,
                         seed=config.seed, bf16=False, report_to="none", save_strategy="no", eval_strategy="no",
                         logging_steps=1, disable_tqdm=True, use_cpu=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset(pairs[n_eval:]),
                             eval_dataset=dataset(pairs[:n_eval]), processing_class=tokenizer,
                             peft_config=peft_config)
        output = trainer.train()
        metrics = trainer.evaluate()
        history = [r for r in trainer.state.log_history if "loss" in r]
    if metrics.get("eval_loss") is not None and metrics["eval_loss"] != metrics["eval_loss"]:
        raise SelftrainError("The DPO loss became NaN; no adapter was saved.")
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir)
    return DPOResult(adapter_dir=output_dir, train_loss=float(output.training_loss),
                     eval_accuracy=float(metrics.get("eval_rewards/accuracies", float("nan"))),
                     eval_loss=float(metrics.get("eval_loss", float("nan"))), n_train=len(pairs) - n_eval,
                     n_eval=n_eval, seconds=time.perf_counter() - began, history=history)

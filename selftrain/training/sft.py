"""LoRA supervised fine-tuning recipe: `run(config, examples, ...) -> SFTResult`.

Reads top to bottom: load → attach LoRA → tokenize (loss on answer tokens only) → split
→ train with AdamW, linear warmup/decay and periodic eval loss, checkpointing as it goes
→ keep the best adapter by eval loss → save it in standard PEFT format.

A plain loop instead of `transformers.Trainer`: it is short, and it leaves room for the
CPU-speed work that Trainer's per-step overheads get in the way of. What makes it fast
on a CPU (each measured in bench/RESULTS.md, "LoRA fine-tuning"):
- packing: a step's examples end to end in one row, no padding, attention kept inside
  each example (`packing.py`);
- logits only at answer positions (the 49k-column vocabulary matmul on prompt tokens
  would be thrown away by the loss);
- bf16 base and adapters with fp32 master weights (`precision.py`): no per-layer dtype
  round trips, no lost small updates;
- a dropout that draws 16 random bits per element instead of an fp32 Bernoulli sample;
- the LoRA layers that read one input (q/k/v) computed by one hand-written autograd step,
  with one dropout mask applied as integer bits (`fused.py`);
- the frozen weights packed once into oneDNN's layout, instead of reordered by every
  matmul, forward and backward (`models/prepack.py`);
- AdamW's fused kernel over all the adapter tensors.

Under `accelerate launch` / `torchrun` with several processes it trains data-parallel:
each rank its share of every epoch, gradients averaged every step (`distributed.py`).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from selftrain.data.curate import Example
from selftrain.errors import SelftrainError
from selftrain.models.base import load_model, lora_target_modules, resolve_dtype
from selftrain.models.prompting import render_answer, render_prompt

MIXED_PRECISION = ("master", "fp32-adapters", "autocast")


class TrainingDiverged(SelftrainError):
    """The loss became NaN or infinite; no adapter is saved."""


@dataclass
class SFTConfig:
    epochs: int = 3
    batch_size: int = 2  # examples per optimizer step
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_length: int = 512  # tokens per example
    eval_fraction: float = 0.1
    eval_steps: int = 50
    save_steps: int = 100  # optimizer steps between checkpoints (spec)
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=list)
    prompt_format: str = "chat"
    dtype: str = "auto"  # auto: bfloat16 where the hardware has it (models/base.resolve_dtype)
    max_grad_norm: float = 1.0
    report_to: str = "none"  # none | tensorboard | mlflow
    num_threads: int = 0  # torch intra-op threads; 0 = OMP_NUM_THREADS, else the fastest count timed at the start
    # Speed levers, on by default; off reproduces the plain recipe (bench/sft.py measures each).
    packing: bool = True  # examples end to end, attention kept inside each (else right padding)
    answer_logits_only: bool = True  # vocabulary projection only where the loss is taken
    blockwise_loss: bool = True  # ... and there a block of positions at a time (packing.py)
    mixed_precision: str = "master"  # with bf16: master (bf16 adapters, fp32 masters) | fp32-adapters | autocast
    fast_dropout: bool = True
    fused_lora: bool = True  # q/k/v adapters in one autograd step, one dropout mask per input (fused.py)
    packed_weights: bool = True  # frozen weights packed once for oneDNN's bf16 matmuls (models/prepack.py)

    @classmethod
    def from_settings(cls, s) -> "SFTConfig":
        return cls(**{name: getattr(s, name) for name in cls.__dataclass_fields__ if hasattr(s, name)})


@dataclass
class SFTResult:
    adapter_dir: Path
    train_loss: float  # mean loss of the last logged window
    eval_loss: float  # best eval loss (the kept adapter's)
    initial_eval_loss: float
    steps: int
    n_train: int
    n_eval: int
    tokens: int  # real (non-padding) tokens trained on
    seconds: float
    target_modules: list[str]
    history: list[dict]  # every step since the start, including steps before a resume
    summary: dict = field(default_factory=dict)  # monitor's run summary
    alerts: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0  # 0 = started fresh


def tokenize(examples: list[Example], tokenizer, config: SFTConfig) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; labels are -100 on the prompt so only the answer
    is learned. Over-long answers are cut at max_length; a prompt that alone fills it is
    skipped."""
    rows = []
    for ex in examples:
        prompt = tokenizer(render_prompt(tokenizer, ex.prompt, config.prompt_format),
                           add_special_tokens=False)["input_ids"]
        answer = tokenizer(render_answer(ex.code, ex.explanation, config.prompt_format, tokenizer),
                           add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt) >= config.max_length - 8:
            continue
        ids = (prompt + answer)[:config.max_length]
        rows.append((ids, [-100] * len(prompt) + ids[len(prompt):]))
    return rows


def collate(rows, pad_id: int):
    """Right-padded batch (the unpacked path)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then linear decay to 0 at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def loss_logits(model, config: SFTConfig) -> str:
    """Where the packed loss projects onto the vocabulary (`packing.packed_loss`'s modes)."""
    from selftrain.training.packing import accepts_logits_to_keep, blockwise_loss_parts

    if not config.answer_logits_only:
        return "all"
    if config.blockwise_loss and blockwise_loss_parts(model) is not None:
        return "blockwise"
    return "answers" if accepts_logits_to_keep(model) else "all"


def use_speed_levers(model, config: SFTConfig) -> tuple[bool, str]:
    """Switch on the speed levers `config` asks for, on a LoRA model about to train: segment
    attention for packed rows, fast dropout, fused LoRA layers, packed frozen weights.
    Returns (whether rows are packed, where the loss projects: `loss_logits`)."""
    from selftrain.models.prepack import use_packed_weights
    from selftrain.training.fused import use_fused_lora
    from selftrain.training.packing import use_segment_attention
    from selftrain.training.precision import use_fast_dropout

    packed = config.packing and use_segment_attention(model, config.max_length)
    logits = loss_logits(model, config)
    if config.fast_dropout:
        use_fast_dropout(model)
    if config.fused_lora:
        use_fused_lora(model)
    if config.packed_weights:
        use_packed_weights(model)
    return packed, logits


def batch_loss(model, rows, pad_id: int, packed: bool, logits: str):
    """(mean loss over the answer tokens of `rows`, answer tokens, real tokens); `logits` as
    in `packing.packed_loss`, for packed rows."""
    if packed:
        from selftrain.training.packing import pack, packed_loss

        batch = pack(rows)
        loss, n = packed_loss(model, batch, logits=logits)
        return loss, n, batch.n_tokens
    batch = collate(rows, pad_id)
    return (model(**batch).loss, int((batch["labels"][:, 1:] != -100).sum()),
            int(batch["attention_mask"].sum()))


def evaluate_loss(model, rows, pad_id: int, batch_size: int, packed: bool = False,
                  logits: str = "answers") -> float:
    """Mean loss per answer token over `rows`."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            loss, n, _ = batch_loss(model, rows[start:start + batch_size], pad_id, packed, logits)
            total += float(loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch, a function of (seed, epoch) alone so that a resumed
    run sees the same order as an uninterrupted one."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def check_config(config: SFTConfig) -> None:
    from selftrain.training.monitor import check_report_to

    check_report_to(config.report_to)
    if config.mixed_precision not in MIXED_PRECISION:
        raise SelftrainError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {config.mixed_precision!r}.")
    if config.save_steps <= 0:
        raise SelftrainError(f"Setting 'save_steps' must be a positive integer, got {config.save_steps!r}.")
    if config.num_threads < 0:
        raise SelftrainError(f"Setting 'num_threads' must be 0 (choose automatically) or more, got {config.num_threads!r}.")


def run(config: SFTConfig, examples: list[Example], base_location: str, output_dir: Path, *,
        init_adapter: str | None = None, on_step: Callable[[dict], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_alert: Callable[[str, str, int], None] | None = None,
        checkpoint_dir: Path | None = None, log_dir: Path | None = None) -> SFTResult:
    """Train a LoRA adapter on `examples` and save the best one (by eval loss) to `output_dir`.

    `on_step(record)` gets every step ({step, epoch, loss, learning_rate, tokens, seconds,
    tokens_per_s} and eval_loss when measured); `on_alert(kind, message, step)` every
    monitor alert. With `checkpoint_dir`, a checkpoint is written every `save_steps`
    steps and a run with the same inputs resumes from it; it is removed on success.
    `log_dir` is where TensorBoard logs go when report_to = 'tensorboard'. The run uses
    `num_threads` CPU threads; with 0, OMP_NUM_THREADS or the count timed fastest at its
    start (`threads.py`).
    """
    import torch

    from selftrain.training.threads import training_threads

    check_config(config)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training_threads(config.num_threads, resolve_dtype(config.dtype)))
    try:
        return _run(config, examples, base_location, output_dir, init_adapter=init_adapter,
                    on_step=on_step, progress=progress, on_alert=on_alert,
                    checkpoint_dir=checkpoint_dir, log_dir=log_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config, examples, base_location, output_dir, *, init_adapter, on_step, progress, on_alert,
         checkpoint_dir, log_dir) -> SFTResult:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from selftrain.models.prepack import unpack
    from selftrain.training import checkpoint
    from selftrain.training.distributed import current_world
    from selftrain.training.fused import unfuse
    from selftrain.training.monitor import TrainingMonitor, open_reporter
    from selftrain.training.precision import MasterWeights

    began = time.perf_counter()
    world = current_world()  # one process, or this rank of a data-parallel launch (distributed.py)
    torch.manual_seed(config.seed)

    # 1. Model with LoRA: continue the adapter in service, or start a fresh one. Every
    #    mistake in the inputs is reported here, before any training starts.
    model, tokenizer = load_model(base_location, config.dtype, adapter=init_adapter, trainable_adapter=True)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and config.max_length > context:
        raise SelftrainError(f"Setting 'max_length' is {config.max_length} tokens, over this model's "
                             f"context of {context}; set it to at most {context}.")
    if init_adapter:
        targets = sorted(model.peft_config["default"].target_modules)
    else:
        targets = config.lora_target_modules or lora_target_modules(model)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in present]
        if missing:
            raise SelftrainError(f"LoRA target module(s) {', '.join(missing)} do not exist in this "
                                 f"model; leave lora_target_modules empty to detect them.")
        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout, target_modules=targets))
    model.train()

    # 2. Tokenize and split: eval rows are never trained on.
    rows = tokenize(examples, tokenizer, config)
    if len(rows) < 2:
        skipped = len(examples) - len(rows)
        why = f" ({skipped} had a prompt filling max_length)" if skipped else ""
        raise SelftrainError(f"The dataset has {len(rows)} usable example(s){why}; training needs at "
                             "least 2 usable examples to split into train and eval.")
    random.Random(config.seed).shuffle(rows)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * config.eval_fraction)))
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]

    # 3. Speed: packed rows with per-example attention, cheap dropout, bf16 adapters whose
    #    fp32 masters the optimizer steps (or the plain variants, for measurement).
    packed, logits = use_speed_levers(model, config)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    world.broadcast_(params)  # the same start on every rank
    torch.manual_seed(config.seed + world.rank)  # each rank its own dropout masks
    bf16 = resolve_dtype(config.dtype) == "bfloat16"
    masters = MasterWeights(params, torch.bfloat16 if bf16 and config.mixed_precision == "master"
                            else torch.float32)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and config.mixed_precision == "autocast"
                else nullcontext())
    pad_id = tokenizer.pad_token_id

    def evaluate() -> float:
        with autocast:
            return evaluate_loss(model, eval_rows, pad_id, config.batch_size, packed, logits)

    # 4. Optimizer and schedule. Warmup is capped at 10% of the run: the spec's 100 steps
    #    would otherwise be most of a short run spent below the intended learning rate.
    # Under data parallelism each rank takes its share of every epoch, batch_size per step.
    steps_per_epoch = math.ceil(len(world.shard(list(range(len(train_rows))))) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_steps, max(1, total_steps // 10))
    # fused: one kernel over all the adapters' tensors instead of ~10 operators per tensor.
    optimizer = torch.optim.AdamW(masters.masters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True)
    monitor = TrainingMonitor(on_alert)

    # 5. Resume from this run's last checkpoint, or measure where training starts from.
    ignored = {"num_threads", "report_to", "save_steps"}  # change nothing in the result
    run_id = checkpoint.fingerprint({**{k: v for k, v in asdict(config).items() if k not in ignored},
                                     "world_size": world.size}, base_location, init_adapter, rows)
    state = checkpoint.load(checkpoint_dir, run_id)
    if state is not None:
        with torch.no_grad():
            for master, saved in zip(masters.masters, state["masters"]):
                master.copy_(saved)
        masters.masters_to_params()
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        monitor.load_state_dict(state["monitor"])
        start_step, tokens, history = state["step"], state["tokens"], state["history"]
        initial_eval, best_eval, best_state = state["initial_eval"], state["best_eval"], state["best"]
    else:
        start_step, tokens = 0, 0
        initial_eval = best_eval = evaluate()
        best_state = [m.detach().clone() for m in masters.masters]
        history = [{"step": 0, "eval_loss": initial_eval}]

    def save_checkpoint(step: int) -> None:
        if not world.main:
            return
        checkpoint.save(checkpoint_dir, {
            "fingerprint": run_id, "step": step, "tokens": tokens, "history": history,
            "masters": [m.detach().clone() for m in masters.masters], "names": names,
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "initial_eval": initial_eval, "best_eval": best_eval, "best": best_state,
            "monitor": monitor.state_dict()})

    # 6. Train.
    monitor.reporter = open_reporter(config.report_to if world.main else "none", log_dir or output_dir.parent / "runs")
    try:
        for step in range(start_step, total_steps):
            epoch, index = divmod(step, steps_per_epoch)
            order = world.shard(epoch_order(len(train_rows), config.seed, epoch))
            chunk = [train_rows[i] for i in order[index * config.batch_size:(index + 1) * config.batch_size]]
            lr = lr_at(step, total_steps, config.learning_rate, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            with autocast:
                loss, _, n_tokens = batch_loss(model, chunk, pad_id, packed, logits)
            loss.backward()
            loss_value = world.average_gradients(params, loss)  # every rank sees a NaN on any
            record = {"step": step + 1, "epoch": epoch + 1, "loss": loss_value, "learning_rate": lr}
            if not math.isfinite(loss_value):
                monitor.log_step(record)  # raises the nan_loss alert
                if world.main:
                    checkpoint.remove(checkpoint_dir)  # resuming would only replay the divergence
                raise TrainingDiverged(f"Training loss became {loss_value} at step {step + 1}; "
                                       "no adapter was saved.")
            masters.grads_to_masters()
            torch.nn.utils.clip_grad_norm_(masters.masters, config.max_grad_norm, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            masters.masters_to_params()
            seconds = time.perf_counter() - started
            tokens += n_tokens
            record.update(tokens=n_tokens, seconds=seconds, tokens_per_s=n_tokens / max(seconds, 1e-9))
            if (step + 1) % config.eval_steps == 0 or step + 1 == total_steps:
                record["eval_loss"] = evaluate()
                if record["eval_loss"] < best_eval:
                    best_eval = record["eval_loss"]
                    best_state = [m.detach().clone() for m in masters.masters]
            monitor.log_step(record)
            history.append(record)
            if checkpoint_dir is not None and (step + 1) % config.save_steps == 0 and step + 1 < total_steps:
                save_checkpoint(step + 1)
            if on_step:
                on_step(record)
            if progress:
                progress(step + 1, total_steps)
    finally:
        monitor.close()

    # 7. Keep the best adapter by eval loss (the initial one if training never helped),
    #    saved in fp32 like PEFT's own adapters.
    with torch.no_grad():
        for master, best in zip(masters.masters, best_state):
            master.copy_(best)
    masters.restore_fp32()
    if world.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        checkpoint.remove(checkpoint_dir)
    world.barrier()  # every rank returns once the adapter is on disk
    # The bound forwards hold the model in reference cycles: broken here, its memory (packed
    # copies included) is given back now rather than at the next garbage collection.
    unpack(model)
    unfuse(model)
    losses = [r["loss"] for r in history if "loss" in r]
    recent = losses[-max(1, min(len(losses), 10)):] or [float("nan")]
    return SFTResult(adapter_dir=output_dir, train_loss=sum(recent) / len(recent), eval_loss=best_eval,
                     initial_eval_loss=initial_eval, steps=total_steps, n_train=len(train_rows),
                     n_eval=len(eval_rows), tokens=tokens, seconds=time.perf_counter() - began,
                     target_modules=list(targets), history=history, summary=monitor.summary(),
                     alerts=list(monitor.alerts), resumed_from_step=start_step)

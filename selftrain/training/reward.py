"""Rewards for RLHF: plain functions `(prompts, completions, **kw) -> list[float]`, like TRL's.

- `execution_reward`: run the answer's code in the sandbox; the share of its tests that pass
  (each top-level `assert` counts on its own), or without tests 0.5 for valid syntax plus
  0.5 for running cleanly.
- `heuristic_reward`: the spec's hand-made score (syntax, prompt overlap, quality words).
- `train_reward_model` / `load_reward_model`: a learned reward, the base model with LoRA
  and a scalar head, fitted to preference pairs with the Bradley–Terry loss.
- `mix_rewards`: a weighted average of any of them.
Extra per-prompt columns (a task's `tests`, say) arrive as keyword lists, one item per prompt.
"""

from __future__ import annotations

import ast
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from selftrain.errors import SelftrainError
from selftrain.models.prompting import is_valid_python, split_answer

RewardFn = Callable[..., list[float]]

POSITIVE_INDICATORS = ("correct", "accurate", "efficient", "well-documented",
                       "clean", "optimized", "readable", "comprehensive")
NEGATIVE_INDICATORS = ("incorrect", "buggy", "inefficient", "unclear",
                       "messy", "incomplete", "confusing", "wrong")


# --- execution -------------------------------------------------------------------------

def split_tests(tests: str) -> list[str]:
    """One test program per top-level `assert`, each preceded by the non-assert statements
    (imports, helpers) that come before it, so every assert counts on its own and a failing
    one does not hide the rest. Tests without asserts, or that do not parse, stay whole."""
    try:
        body = ast.parse(tests).body
    except SyntaxError:
        return [tests]
    setup, units = [], []
    for stmt in body:
        source = ast.get_source_segment(tests, stmt) or ast.unparse(stmt)
        if isinstance(stmt, ast.Assert):
            units.append("\n".join(setup + [source]) + "\n")
        else:
            setup.append(source)
    return units or [tests]


_default_sandbox = None


def _sandbox():
    global _default_sandbox
    if _default_sandbox is None:
        from selftrain.evaluation.sandbox import Sandbox

        _default_sandbox = Sandbox(timeout_s=5.0)
    return _default_sandbox


def execution_reward(prompts: Sequence[str], completions: Sequence[str], *, tests: Sequence[str | None] | None = None,
                     sandbox=None, **_) -> list[float]:
    """Fraction of each answer's tests that pass in the sandbox, in [0, 1].

    The code is the answer's first Python block (or its text, unfenced). With no tests for a
    prompt: 0 for invalid or empty code, 0.5 for valid syntax, 1.0 if it also runs cleanly.
    `sandbox` is any object with `run_many([(program, tests)]) -> [result with .passed]`;
    by default a `Sandbox` with a 5 s limit per run.
    """
    sandbox = sandbox or _sandbox()
    tests = list(tests) if tests is not None else [None] * len(completions)
    items, owners, rewards = [], [], [0.0] * len(completions)
    for i, completion in enumerate(completions):
        code = split_answer(completion)[0]
        if not is_valid_python(code):
            continue  # nothing worth running: reward 0
        units = split_tests(tests[i]) if tests[i] and tests[i].strip() else [""]
        for unit in units:
            items.append((code, unit))
            owners.append((i, len(units), not unit))
    for (i, n, no_tests), result in zip(owners, sandbox.run_many(items) if items else []):
        if no_tests:
            rewards[i] = 1.0 if result.passed else 0.5
        else:
            rewards[i] += (1.0 if result.passed else 0.0) / n
    return rewards


# --- the spec's heuristic --------------------------------------------------------------

def semantic_score(prompt: str, response: str) -> float:
    """Jaccard overlap of the lower-cased whitespace tokens of prompt and response."""
    a, b = set(prompt.lower().split()), set(response.lower().split())
    return len(a & b) / len(a | b) if a | b else 0.0


def quality_score(response: str) -> float:
    """(positive − negative indicator words) / 8, mapped from [−1, 1] to [0, 1] (spec)."""
    text = response.lower()
    score = (sum(w in text for w in POSITIVE_INDICATORS)
             - sum(w in text for w in NEGATIVE_INDICATORS)) / len(POSITIVE_INDICATORS)
    return max(0.0, min(1.0, (score + 1) / 2))


def heuristic_reward(prompts: Sequence[str], completions: Sequence[str], **_) -> list[float]:
    """The spec's reward: 0.5, +0.2 valid syntax / −0.3 invalid, +0.3 × semantic score,
    +0.2 × quality score, clamped to [0, 1]. Syntax is checked on the answer's code (its
    first Python block) rather than on the whole reply, whose prose and fences would never
    parse; empty code counts as invalid."""
    out = []
    for prompt, completion in zip(prompts, completions):
        reward = 0.5 + (0.2 if is_valid_python(split_answer(completion)[0]) else -0.3)
        reward += 0.3 * semantic_score(prompt, completion) + 0.2 * quality_score(completion)
        out.append(max(0.0, min(1.0, reward)))
    return out


# --- weighted mix ------------------------------------------------------------------------

def mix_rewards(parts: Sequence[tuple[float, RewardFn]]) -> RewardFn:
    """Σ wᵢ·rᵢ / Σ wᵢ over the parts with a positive weight (so [0, 1] rewards stay there)."""
    parts = [(w, fn) for w, fn in parts if w > 0]
    if not parts:
        raise SelftrainError("The reward mix needs at least one part with a positive weight.")
    total = sum(w for w, _ in parts)

    def mixed(prompts, completions, **kw) -> list[float]:
        scores = [0.0] * len(completions)
        for w, fn in parts:
            for i, r in enumerate(fn(prompts, completions, **kw)):
                scores[i] += w * r / total
        return scores

    return mixed


# --- learned reward model ----------------------------------------------------------------

@dataclass
class RewardModelConfig:
    epochs: int = 3
    batch_size: int = 4  # pairs per optimizer step
    learning_rate: float = 1e-4
    eval_fraction: float = 0.2  # pairs held out for pairwise accuracy
    min_pairs: int = 8  # fewer pairs than this: refuse to train (the accuracy would mean nothing)
    max_length: int = 512  # tokens of prompt + answer; longer ones are cut from the left
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 32
    prompt_format: str = "chat"
    dtype: str = "auto"  # auto: bfloat16 where the hardware has it (models/base.resolve_dtype)


@dataclass
class RewardModelResult:
    model_dir: Path
    eval_accuracy: float  # pairwise accuracy on held-out pairs after training
    initial_eval_accuracy: float  # ... and before (the untrained head)
    train_loss: float  # Bradley–Terry loss of the last epoch
    n_train: int
    n_eval: int
    seconds: float
    history: list[dict] = field(default_factory=list)


HEAD_FILE, META_FILE = "score_head.pt", "reward_model.json"


def _encode(tokenizer, prompt: str, answer: str, config) -> list[int]:
    from selftrain.models.prompting import render_prompt

    text = render_prompt(tokenizer, prompt, config["prompt_format"]) + answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids[-config["max_length"]:]


def _scores(model, head, rows: list[list[int]], pad_id: int):
    """Scalar reward per row: the head on the last real token's final hidden state. [N]."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    hidden = model.get_base_model().get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(rows)), mask.sum(1) - 1]
    return head(last.float()).squeeze(-1)


def train_reward_model(pairs: Sequence[tuple[str, str, str]], base_location: str, output_dir: Path,
                       config: RewardModelConfig | None = None) -> RewardModelResult:
    """Fit a reward model to (prompt, chosen, rejected) pairs and save it to `output_dir`.

    The base model gets a LoRA adapter and a linear head on the final hidden state of the
    answer's last token; both are trained with the Bradley–Terry loss. Pairwise accuracy
    is reported on held-out pairs, before and after.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from selftrain.models.base import load_model, lora_target_modules
    from selftrain.training.losses import bradley_terry_loss, pairwise_accuracy

    config = config or RewardModelConfig()
    pairs = [p for p in pairs if p[1] != p[2]]
    if len(pairs) < max(config.min_pairs, 2):
        raise SelftrainError(f"Training a reward model needs at least {max(config.min_pairs, 2)} preference "
                             f"pairs with different answers; the store has {len(pairs)}.")
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(base_location, config.dtype)
    model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                             target_modules=lora_target_modules(model)))
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)  # every answer starts at 0
    meta = {"base_location": base_location, "prompt_format": config.prompt_format,
            "max_length": config.max_length, "dtype": config.dtype}

    # Held-out pairs never train; every pair becomes (chosen ids, rejected ids).
    pairs = list(pairs)
    random.Random(config.seed).shuffle(pairs)
    n_eval = min(len(pairs) - 1, max(1, round(len(pairs) * config.eval_fraction)))
    encoded = [(_encode(tokenizer, p, c, meta), _encode(tokenizer, p, r, meta)) for p, c, r in pairs]
    eval_rows, train_rows = encoded[:n_eval], encoded[n_eval:]
    pad = tokenizer.pad_token_id

    def accuracy() -> float:
        with torch.no_grad():
            s = _scores(model, head, [c for c, _ in eval_rows] + [r for _, r in eval_rows], pad)
        return pairwise_accuracy(s[:n_eval], s[n_eval:])

    initial = accuracy()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    history, epoch_loss = [], math.nan
    model.train()
    for epoch in range(config.epochs):
        order = list(range(len(train_rows)))
        random.Random(f"{config.seed}:{epoch}").shuffle(order)
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = [train_rows[i] for i in order[start:start + config.batch_size]]
            s = _scores(model, head, [c for c, _ in batch] + [r for _, r in batch], pad)
            loss = bradley_terry_loss(s[:len(batch)], s[len(batch):])
            if not torch.isfinite(loss):
                raise SelftrainError(f"The reward model's loss became {float(loss)} in epoch {epoch + 1}; "
                                     "no reward model was saved.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        epoch_loss = sum(losses) / len(losses)
        history.append({"epoch": epoch + 1, "loss": epoch_loss, "eval_accuracy": accuracy()})
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    torch.save(head.state_dict(), output_dir / HEAD_FILE)
    (output_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return RewardModelResult(model_dir=output_dir, eval_accuracy=history[-1]["eval_accuracy"] if history else initial,
                             initial_eval_accuracy=initial, train_loss=epoch_loss, n_train=len(train_rows),
                             n_eval=n_eval, seconds=time.perf_counter() - began, history=history)


class LearnedReward:
    """A trained reward model as a reward function: σ(score) per completion, in (0, 1)."""

    def __init__(self, model_dir: Path, batch_size: int = 8):
        import torch
        from peft import PeftModel

        from selftrain.models.base import load_model

        model_dir = Path(model_dir)
        if not (model_dir / META_FILE).exists():
            raise SelftrainError(f"{model_dir} holds no reward model (no {META_FILE}); train one first.")
        self.meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
        base, self.tokenizer = load_model(self.meta["base_location"], self.meta["dtype"])
        self.model = PeftModel.from_pretrained(base, str(model_dir)).eval()
        self.head = torch.nn.Linear(base.config.hidden_size, 1)
        self.head.load_state_dict(torch.load(model_dir / HEAD_FILE, weights_only=True))
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_) -> list[float]:
        import torch

        rows = [_encode(self.tokenizer, p, c, self.meta) for p, c in zip(prompts, completions)]
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                s = _scores(self.model, self.head, rows[start:start + self.batch_size], self.tokenizer.pad_token_id)
                out += torch.sigmoid(s).tolist()
        return out


def load_reward_model(model_dir: Path) -> LearnedReward:
    return LearnedReward(model_dir)

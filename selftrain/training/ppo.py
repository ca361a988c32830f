"""PPO recipe with any Python reward function: `run(config, tasks, reward_fn, ...) -> PPOResult`.

One iteration, read top to bottom (`ppo_iteration`):
  1. rollout: sample answers from the LoRA policy (temperature, no other filters, so the
     log-probabilities below are those of the distribution sampled from);
  2. score: `reward_fn(prompts, completions, **columns) -> list[float]`, checked for NaN;
  3. evaluate the rollout: per-token log-probs of the policy and of the reference (the same
     model with its adapter disabled: no second copy in memory), values from the value head;
  4. per-token rewards: −β·KL on every token, plus the score on the last one; GAE;
     whitened advantages;
  5. update: several epochs over shuffled minibatches, clipped policy loss + clipped value
     loss, Adam on the LoRA weights and the value head only;
  6. adapt β toward the target KL (Ziegler et al. 2019).
`run` repeats it, logs one record per iteration, keeps the last adapter whose rollouts stayed
within `target_kl × kl_stop_factor` of the reference, and saves it in PEFT format. Nothing is
saved when the reward function fails or the losses diverge. The math lives in `losses.py`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from selftrain.errors import SelftrainError


class RewardFunctionError(SelftrainError):
    """The reward function raised, or returned something other than one finite number per answer."""


class TrainingDiverged(SelftrainError):
    """A PPO loss became NaN or infinite; no adapter is saved."""


@dataclass
class PPOConfig:
    iterations: int = 20  # rollout + update rounds
    batch_size: int = 8  # prompts per rollout
    max_new_tokens: int = 128
    temperature: float = 1.0  # sampling temperature; log-probs are taken at the same temperature
    top_k: int = 0  # 0 = sample from the whole vocabulary
    ppo_epochs: int = 4  # passes over each rollout
    minibatch_size: int = 4  # rollouts per optimizer step
    learning_rate: float = 5e-5  # Adam, LoRA weights and value head
    gamma: float = 0.99  # GAE discount (spec)
    lam: float = 0.95  # GAE λ (spec)
    clip_range: float = 0.2  # PPO ε (spec)
    value_clip_range: float = 0.2
    vf_coef: float = 0.1  # weight of the value loss
    init_kl_coef: float = 0.05  # β at the start
    adaptive_kl: bool = True
    target_kl: float = 6.0  # nats per answer the adaptive β steers toward
    kl_horizon: int = 10_000  # answers over which β adapts (Ziegler et al.)
    kl_estimator: str = "k1"  # k1 | k3, see losses.kl_penalty
    kl_stop_factor: float = 3.0  # stop when a rollout's KL exceeds target_kl × this
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(default_factory=list)
    prompt_format: str = "chat"
    dtype: str = "auto"  # auto: bfloat16 where the hardware has it (models/base.resolve_dtype)
    num_threads: int = 0  # torch intra-op threads during run(); 0 = torch's default (one per core).
    # On a machine shared with other jobs, 1 can be ~10x faster than oversubscribed threads.


@dataclass
class PPOResult:
    adapter_dir: Path
    iterations: int  # iterations completed
    history: list[dict]  # one record per iteration (see ppo_iteration)
    stopped_early: str | None  # why training stopped before `iterations`, if it did
    seconds: float


@dataclass
class PPOState:
    """What persists between iterations."""
    config: PPOConfig
    model: object  # PeftModel
    tokenizer: object
    value_head: object  # torch.nn.Linear(hidden, 1), fp32
    optimizer: object
    kl: object  # losses.AdaptiveKLController
    params: list  # the trainable tensors: LoRA weights, then the value head
    rng: random.Random


@dataclass
class Rollout:
    query: object  # [B, P] left-padded prompt ids
    query_mask: object  # [B, P]
    response: object  # [B, T] sampled ids, right-padded after the first end-of-sequence
    mask: object  # [B, T] float, 1 on real response tokens (the end-of-sequence included)
    texts: list[str]


def setup(config: PPOConfig, base_location: str, init_adapter: str | None = None) -> PPOState:
    """Load the model, attach (or continue) a LoRA adapter, add a value head and Adam."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selftrain.models.base import load_model, lora_target_modules
    from selftrain.training.losses import AdaptiveKLController

    check_config(config)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(base_location, config.dtype, adapter=init_adapter, trainable_adapter=True)
    if not init_adapter:
        targets = config.lora_target_modules or lora_target_modules(model)
        # Dropout 0: the rollout's log-probs must be the ones the update starts from.
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=config.lora_r,
                                                 lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                                 target_modules=targets))
    # Adapters train in fp32 (small Adam steps vanish in bf16); the frozen base stays as loaded.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.eval()
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(value_head.weight), torch.nn.init.zeros_(value_head.bias)
    params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    return PPOState(config, model, tokenizer, value_head, optimizer,
                    AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon),
                    params, random.Random(config.seed))


def check_config(config: PPOConfig) -> None:
    if config.kl_estimator not in ("k1", "k3"):
        raise SelftrainError(f"Setting 'kl_estimator' must be k1 or k3, got {config.kl_estimator!r}.")
    for name in ("iterations", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size"):
        if getattr(config, name) < 1:
            raise SelftrainError(f"Setting '{name}' must be a positive integer, got {getattr(config, name)!r}.")
    if config.temperature <= 0:
        raise SelftrainError(f"Setting 'temperature' must be above 0, got {config.temperature!r}.")


def rollout(state: PPOState, prompts: list[str]) -> Rollout:
    """Sample one answer per instruction from the policy (adapter on)."""
    import torch
    from transformers import GenerationConfig

    from selftrain.models.prompting import render_prompt

    cfg, tok = state.config, state.tokenizer
    tok.padding_side = "left"
    enc = tok([render_prompt(tok, p, cfg.prompt_format) for p in prompts], return_tensors="pt",
              padding=True, add_special_tokens=False)
    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=1.0,
                           max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    with torch.no_grad():
        out = state.model.generate(**enc, generation_config=gen)
    response = out[:, enc["input_ids"].shape[1]:]
    if response.shape[1] == 0:  # nothing generated at all: a single end-of-sequence stands in
        response = torch.full((len(prompts), 1), tok.eos_token_id, dtype=torch.long)
    # Real tokens run up to and including the first end-of-sequence; after it, padding.
    is_eos = response == tok.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).float()
    response = response.masked_fill(after_eos, tok.pad_token_id)
    texts = []
    for row, m in zip(response, mask):
        ids = [t for t in row[:int(m.sum())].tolist() if t != tok.eos_token_id]
        texts.append(tok.decode(ids, skip_special_tokens=True))
    return Rollout(enc["input_ids"], enc["attention_mask"], response, mask, texts)


def score(reward_fn: Callable[..., Sequence[float]], prompts: list[str], texts: list[str],
          columns: dict[str, list]) -> list[float]:
    """Call the reward function and insist on one finite number per answer."""
    try:
        rewards = reward_fn(prompts, texts, **columns)
    except SelftrainError:
        raise
    except Exception as exc:
        raise RewardFunctionError(f"The reward function raised {type(exc).__name__}: {exc}; "
                                  "no adapter was saved.") from exc
    try:
        rewards = [float(r) for r in rewards]
    except (TypeError, ValueError):
        raise RewardFunctionError("The reward function must return a list of numbers, one per answer; "
                                  f"got {type(rewards).__name__}.") from None
    if len(rewards) != len(texts):
        raise RewardFunctionError(f"The reward function returned {len(rewards)} rewards for {len(texts)} "
                                  "answers; it must return one per answer.")
    bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
    if bad:
        raise RewardFunctionError(f"The reward function returned {rewards[bad[0]]} for answer {bad[0]} "
                                  f"({texts[bad[0]][:40]!r}); rewards must be finite. No adapter was saved.")
    return rewards


def forward(state: PPOState, ro: Rollout, rows=slice(None), values: bool = True):
    """Per-token log-probs [b, T], logits [b, T, V] (at the sampling temperature) and values
    [b, T] (or None) of the rollout's responses under the model as it is now."""
    import torch

    from selftrain.training.losses import token_logprobs

    query, response = ro.query[rows], ro.response[rows]
    attn = torch.cat([ro.query_mask[rows], ro.mask[rows].long()], dim=1)
    positions = (attn.cumsum(1) - 1).clamp(min=0)  # as generation counted them under left padding
    causal = state.model.get_base_model()
    hidden = causal.get_decoder()(input_ids=torch.cat([query, response], 1), attention_mask=attn,
                                  position_ids=positions).last_hidden_state
    # The state before token t is the hidden vector at the position just before it.
    hidden = hidden[:, query.shape[1] - 1:-1]
    logits = causal.get_output_embeddings()(hidden).float() / state.config.temperature
    v = state.value_head(hidden.float()).squeeze(-1) if values else None
    return token_logprobs(logits, response), logits, v


def ppo_iteration(state: PPOState, tasks: list[dict], reward_fn, timings: dict | None = None) -> dict:
    """One rollout, scoring and update on `tasks` (dicts with 'prompt' and any reward columns).

    Returns {reward, kl, kl_coef, clip_fraction, value_clip_fraction, entropy, policy_loss,
    value_loss, response_tokens, empty_answers, seconds}; `timings` gets rollout/score/update
    seconds. KL is per answer (summed over its tokens, with the configured estimator),
    entropy per token."""
    import torch

    from selftrain.training import losses

    cfg = state.config
    timings = timings if timings is not None else {}
    began = time.perf_counter()
    prompts = [t["prompt"] for t in tasks]
    columns = {k: [t.get(k) for t in tasks] for k in tasks[0] if k != "prompt"}

    # 1. Rollout.
    ro = rollout(state, prompts)
    timings["rollout"] = time.perf_counter() - began

    # 2. Score.
    t0 = time.perf_counter()
    scores = torch.tensor(score(reward_fn, prompts, ro.texts, columns))
    timings["score"] = time.perf_counter() - t0

    # 3. Evaluate the rollout under the policy, the reference and the value head.
    t0 = time.perf_counter()
    with torch.no_grad():
        old_logprobs, logits, old_values = forward(state, ro)
        entropy = losses.masked_mean(losses.entropy_from_logits(logits), ro.mask).item()
        del logits
        with state.model.disable_adapter():
            ref_logprobs, _, _ = forward(state, ro, values=False)

        # 4. Rewards per token: the KL penalty everywhere, the score at the last real token.
        kl_tokens = losses.kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * ro.mask
        rewards = -state.kl.value * kl_tokens
        last = (ro.mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(prompts)), last] += scores
        advantages, returns = losses.gae(rewards, old_values, ro.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = losses.whiten(advantages, ro.mask)
        kl_per_answer = kl_tokens.sum(1).mean().item()

    # 5. Update: epochs over shuffled minibatches; only LoRA weights and the value head move.
    stats = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "value_clip_fraction": []}
    n = len(prompts)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.minibatch_size):
            rows = order[start:start + cfg.minibatch_size]
            logprobs, _, values = forward(state, ro, rows)
            pl, clip_frac = losses.policy_loss(logprobs, old_logprobs[rows], advantages[rows], ro.mask[rows],
                                               cfg.clip_range)
            vl, vclip_frac = losses.value_loss(values, old_values[rows], returns[rows], ro.mask[rows],
                                               cfg.value_clip_range)
            loss = pl + cfg.vf_coef * vl
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"The PPO loss became {float(loss)}; no adapter was saved.")
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(state.params, cfg.max_grad_norm)
            state.optimizer.step()
            for key, value in zip(stats, (pl, vl, clip_frac, vclip_frac)):
                stats[key].append(float(value.detach()))
    timings["update"] = time.perf_counter() - t0

    # 6. Steer β toward the target KL.
    if cfg.adaptive_kl:
        state.kl.update(kl_per_answer, n)
    record = {"reward": scores.mean().item(), "kl": kl_per_answer, "kl_coef": state.kl.value,
              "entropy": entropy, "response_tokens": ro.mask.sum(1).mean().item(),
              "empty_answers": sum(not t.strip() for t in ro.texts)}
    record.update({k: sum(v) / len(v) for k, v in stats.items()})
    record["seconds"] = time.perf_counter() - began
    return record


def run(config: PPOConfig, tasks: list[dict], reward_fn: Callable[..., Sequence[float]], base_location: str,
        output_dir: Path, *, init_adapter: str | None = None,
        on_iteration: Callable[[dict], None] | None = None) -> PPOResult:
    """Train a LoRA adapter with PPO against `reward_fn` and save it to `output_dir`.

    `tasks`: dicts with a 'prompt' (the user's instruction) and optional extra columns that
    are passed to the reward function by name, one item per prompt (e.g. 'tests').
    """
    import torch

    if not tasks or any(not isinstance(t, dict) or not str(t.get("prompt") or "").strip() for t in tasks):
        raise SelftrainError("PPO needs a non-empty list of tasks, each a dict with a non-empty 'prompt'.")
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _run(config, tasks, reward_fn, base_location, output_dir, init_adapter, on_iteration)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config, tasks, reward_fn, base_location, output_dir, init_adapter, on_iteration) -> PPOResult:
    import torch

    began = time.perf_counter()
    state = setup(config, base_location, init_adapter)
    order: list[int] = []
    history, stopped, good = [], None, None

    def snapshot():
        return [p.detach().clone() for p in state.params]

    for iteration in range(config.iterations):
        if len(order) < config.batch_size:
            fresh = list(range(len(tasks)))
            state.rng.shuffle(fresh)
            order += fresh * math.ceil(config.batch_size / len(fresh))
        batch, order = [tasks[i] for i in order[:config.batch_size]], order[config.batch_size:]
        before = snapshot()
        timings: dict = {}
        record = ppo_iteration(state, batch, reward_fn, timings)
        record.update(iteration=iteration + 1, **{f"{k}_s": v for k, v in timings.items()})
        history.append(record)
        if on_iteration:
            on_iteration(record)
        # This rollout came from the weights in `before`: if its KL ran away, those weights are
        # the first bad ones, and the last good weights are the ones before them.
        if record["kl"] > config.target_kl * config.kl_stop_factor:
            stopped = (f"KL {record['kl']:.1f} exceeded {config.target_kl * config.kl_stop_factor:.1f} "
                       f"at iteration {iteration + 1}; kept the adapter the previous rollout came from.")
            with torch.no_grad():
                for p, saved in zip(state.params, good if good is not None else before):
                    p.copy_(saved)
            break
        good = before
    output_dir.mkdir(parents=True, exist_ok=True)
    state.model.save_pretrained(output_dir)
    torch.save(state.value_head.state_dict(), output_dir / "value_head.pt")
    return PPOResult(adapter_dir=output_dir, iterations=len(history), history=history, stopped_early=stopped,
                     seconds=time.perf_counter() - began)

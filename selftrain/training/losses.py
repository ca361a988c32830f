"""The math of RLHF as pure functions: GAE, PPO's clipped losses, KL penalties, the adaptive
KL controller, advantage whitening, entropy, and the Bradley–Terry and DPO losses.

No I/O, no models: tensors in, tensors out, shapes in each docstring. Conventions:
- B = sequences in a batch, T = response tokens (right-padded); `mask` is 1.0 on real
  response tokens and 0.0 on padding, shape [B, T], real tokens first in each row.
- Log-probabilities are of the token actually sampled, one per position: [B, T].
Every function is checked against values worked out by hand in tests/rl/test_rl_losses.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance of `x` over the masked positions (a scalar)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` [B, T] to zero mean and unit variance over the masked positions; padding
    comes back as 0. With shift_mean=False the mean is kept (used for rewards, whose sign
    matters). Advantage whitening keeps the policy step's size independent of reward scale."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 0.99,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 11-16), per token.

    rewards, values, mask: [B, T]. Returns (advantages, returns), both [B, T], 0 on padding.
        δ_t = r_t + γ·V(s_{t+1})·m_{t+1} − V(s_t)
        A_t = δ_t + γλ·m_{t+1}·A_{t+1}
        R_t = A_t + V(s_t)          (the value target)
    The episode ends at the last real token: past it, V and A count as 0. The spec's
    defaults γ = 0.99, λ = 0.95.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m
        advantages[:, t] = adv
        next_value = values[:, t] * m
        next_adv = adv
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), to minimise.

    logprobs (with grad), old_logprobs (rollout), advantages, mask: [B, T].
        ρ_t = exp(logπ_θ − logπ_old)
        L = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε))
    Returns (loss scalar, clip fraction scalar): the share of tokens where the clipped
    term was the larger, i.e. where the update was cut.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """Clipped value loss (as in OpenAI baselines' PPO2), to minimise.

    values (with grad), old_values (rollout), returns: [B, T].
        V_clip = V_old + clip(V − V_old, −c, c)
        L = ½·mean_t max((V − R)², (V_clip − R)²)
    Returns (loss scalar, clip fraction scalar).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the sampled tokens: [B, T] → [B, T].

    With x ~ π and log-ratio ℓ = log π(x) − log π_ref(x) (Schulman, "Approximating KL
    divergence", 2020):
    - "k1": ℓ. Unbiased, but single tokens can be negative; its sum over a sequence is
      the sequence's log-ratio, the standard RLHF penalty (Ziegler et al. 2019).
    - "k3": (e^{−ℓ} − 1) + ℓ. Also unbiased, never negative, lower variance; a safer
      choice when the policy drifts far.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be 'k1' or 'k3', got {estimator!r}")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at each position: [..., V] → [...].
    H = logsumexp(z) − Σ softmax(z)·z, which never takes the log of a zero probability."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] at each position: logits [B, T, V], tokens [B, T] → [B, T]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class AdaptiveKLController:
    """The KL coefficient β that keeps KL(π ‖ π_ref) near a target (Ziegler et al. 2019, §2.2):
        e = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)
    KL is per sequence (summed over its tokens); n_steps is the sequences just trained on."""

    value: float
    target: float
    horizon: int = 10_000

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Reward-model loss, −mean log σ(r(x, y_chosen) − r(x, y_rejected)): [B], [B] → scalar.
    (The spec prints a different formula; this is the Bradley–Terry likelihood.)"""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Share of pairs the reward model orders right (ties count as wrong)."""
    return float((chosen_rewards > rejected_rewards).float().mean()) if len(chosen_rewards) else math.nan


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """DPO's sigmoid loss (Rafailov et al. 2023, eq. 7): every input [B] is a sequence's summed
    log-probability of its answer under the policy or the reference.
        z = β·((log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)))
        L = −mean log σ(z)
    Returns (loss, chosen implicit rewards [B], rejected implicit rewards [B])."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()

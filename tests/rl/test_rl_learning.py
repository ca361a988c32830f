"""Proof that PPO learns, on the real SmolLM2 (integration tier).

Task: eight requests for small functions. Reward: 1 when the answer opens with a code block
(```` ``` ```` or `def`), 0 otherwise; it is decided within the first few tokens, so short
rollouts measure it exactly. The base model opens with prose ("Here is a Python function
that ...") about half the time.

Measurement: before and after training, 6 samples per prompt from the same seeds; the per-prompt
mean rewards are compared as a paired sample (8 differences), and the mean improvement must
exceed 2 standard errors of the paired differences, i.e. be larger than sampling noise.
The seed is fixed for reproducibility, not chosen: it is the default 0, and was never tuned.
"""

import math

import pytest

from selftrain.training import ppo

NAMES = ["add", "is_even", "reverse_string", "square", "max_of_three", "count_vowels", "factorial", "is_palindrome"]
TASKS = [{"prompt": f"Write a Python function `{n}`."} for n in NAMES]
SAMPLES = 6


def opens_with_code(prompts, completions, **kw):
    return [1.0 if c.lstrip().startswith(("```", "def ")) else 0.0 for c in completions]


def per_prompt_reward(state) -> list[float]:
    import torch

    # The same sampling seed before and after (a paired measurement), without touching the
    # random stream that training's rollouts draw from (that one follows config.seed).
    rng = torch.get_rng_state()
    torch.manual_seed(1234)
    prompts = [t["prompt"] for t in TASKS] * SAMPLES
    rewards = opens_with_code(prompts, ppo.rollout(state, prompts).texts)
    torch.set_rng_state(rng)
    return [sum(rewards[i::len(TASKS)]) / SAMPLES for i in range(len(TASKS))]


@pytest.mark.integration
def test_ppo_raises_reward_beyond_noise(builtin_model_dir):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = ppo.PPOConfig(batch_size=8, max_new_tokens=6, ppo_epochs=2, minibatch_size=8,
                               learning_rate=2e-4, init_kl_coef=0.02, seed=0)
        state = ppo.setup(config, str(builtin_model_dir))
        before = per_prompt_reward(state)
        history = [ppo.ppo_iteration(state, TASKS, opens_with_code) for _ in range(6)]
        after = per_prompt_reward(state)
    finally:
        torch.set_num_threads(previous)
    diffs = [a - b for a, b in zip(after, before)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    se = sd / math.sqrt(len(diffs))
    print(f"before {sum(before) / 8:.3f} after {sum(after) / 8:.3f} mean diff {mean:.3f} se {se:.3f}",
          [round(h["reward"], 2) for h in history], [round(h["kl"], 2) for h in history])
    assert mean > 2 * se and mean > 0.1

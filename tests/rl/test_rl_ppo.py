"""The PPO recipe end to end on the tiny random Llama: it runs, moves only what it should,
and refuses bad rewards without saving anything."""

import math

import pytest
import torch

from selftrain.errors import SelftrainError
from selftrain.training import ppo

TASKS = [{"prompt": "Write a function add(a, b).", "name": "add"},
         {"prompt": "Write a function is_even(n).", "name": "is_even"}]


def small_config(**kw) -> ppo.PPOConfig:
    base = dict(iterations=1, batch_size=2, max_new_tokens=6, ppo_epochs=2, minibatch_size=1,
                learning_rate=1e-2, lora_r=2, dtype="float32")
    return ppo.PPOConfig(**{**base, **kw})


def length_reward(prompts, completions, **kw):
    return [len(c) / 10 for c in completions]


def test_one_iteration_moves_only_adapter_and_value_head(tiny_model_dir):
    state = ppo.setup(small_config(), str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    head_before = state.value_head.weight.detach().clone()
    seen = {}

    def reward(prompts, completions, name):
        seen["name"] = name
        return length_reward(prompts, completions)

    timings = {}
    record = ppo.ppo_iteration(state, TASKS, reward, timings)
    assert seen["name"] == ["add", "is_even"]  # extra task columns reach the reward function
    for key in ("reward", "kl", "kl_coef", "clip_fraction", "entropy", "value_loss", "policy_loss"):
        assert math.isfinite(record[key]), key
    assert set(timings) == {"rollout", "score", "update"}
    changed = {n for n, p in state.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert not torch.equal(state.value_head.weight, head_before)


def test_run_saves_a_peft_adapter_with_history(tiny_model_dir, tmp_path):
    records = []
    result = ppo.run(small_config(iterations=2), TASKS, length_reward, str(tiny_model_dir), tmp_path / "a",
                     on_iteration=records.append)
    assert result.iterations == 2 and len(result.history) == 2 and records == result.history
    assert (tmp_path / "a" / "adapter_config.json").exists()
    assert (tmp_path / "a" / "value_head.pt").exists()


@pytest.mark.parametrize("reward, message", [
    (lambda p, c, **kw: [math.nan] * len(c), "finite"),
    (lambda p, c, **kw: 1 / 0, "ZeroDivisionError"),
    (lambda p, c, **kw: [1.0], "one per answer"),
])
def test_bad_reward_functions_stop_with_a_clear_error_and_save_nothing(tiny_model_dir, tmp_path, reward, message):
    with pytest.raises(ppo.RewardFunctionError, match=message):
        ppo.run(small_config(), TASKS, reward, str(tiny_model_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_answers_are_rewarded_not_fatal(tiny_model_dir):
    # A token budget of 1 and an end-of-sequence-only rollout both leave empty texts.
    state = ppo.setup(small_config(max_new_tokens=1), str(tiny_model_dir))
    ro = ppo.rollout(state, [t["prompt"] for t in TASKS])
    assert ro.mask.sum(1).min() >= 1
    got = []
    record = ppo.ppo_iteration(state, TASKS, lambda p, c, **kw: got.extend(c) or [0.0 if not x else 1.0 for x in c])
    assert len(got) == 2 and math.isfinite(record["policy_loss"])


def test_kl_runaway_stops_early_and_restores_weights(tiny_model_dir, tmp_path):
    # A target of ~0 nats: the first rollout (adapter still zero) has KL 0, the second, after
    # one update, is already "too far" (k3 is positive whenever the policy moved).
    result = ppo.run(small_config(iterations=3, target_kl=1e-9, kl_stop_factor=1.0, kl_estimator="k3"), TASKS, length_reward,
                     str(tiny_model_dir), tmp_path / "a")
    assert result.stopped_early and result.iterations == 2


def test_bad_input_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(SelftrainError, match="prompt"):
        ppo.run(small_config(), [{"text": "x"}], length_reward, str(tiny_model_dir), tmp_path / "a")
    with pytest.raises(SelftrainError, match="kl_estimator"):
        ppo.run(small_config(kl_estimator="k9"), TASKS, length_reward, str(tiny_model_dir), tmp_path / "a")

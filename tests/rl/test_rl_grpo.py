"""GRPO through TRL on the tiny Llama, with a Python reward that sees the task's columns."""

from selftrain.training import grpo


def test_grpo_trains_with_a_python_reward(tiny_model_dir, tmp_path):
    seen = []

    def reward(prompts, completions, tests=None, **kw):
        seen.append((list(prompts), list(tests)))
        return [len(c) / 10 for c in completions]

    tasks = [{"prompt": "Write add.", "tests": "assert add(1, 2) == 3"}, {"prompt": "Write sub.", "tests": ""}]
    config = grpo.GRPOConfig(steps=1, batch_size=4, num_generations=2, max_new_tokens=4, lora_r=2, dtype="float32")
    result = grpo.run(config, tasks, reward, str(tiny_model_dir), tmp_path / "a")
    assert (tmp_path / "a" / "adapter_config.json").exists() and result.history
    prompts, tests = seen[0]
    assert set(prompts) <= {"Write add.", "Write sub."}  # the instruction, not the chat rendering
    assert all(t in ("assert add(1, 2) == 3", "") for t in tests)

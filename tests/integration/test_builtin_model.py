"""The real built-in model: conversion from the shipped GGUF, generation, one LoRA step."""

import pytest

from selftrain.data.curate import Example
from selftrain.models.base import load_model, resolve_base_model
from selftrain.models.generate import generate
from selftrain.models.prompting import render_prompt

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def builtin(builtin_model_dir):
    return str(builtin_model_dir), builtin_model_dir.parent


def test_conversion_happens_once(builtin):
    location, cache = builtin
    config = cache / "smollm2-135m-instruct" / "config.json"
    assert location == str(config.parent)
    before = config.stat().st_mtime_ns
    assert resolve_base_model("smollm2-135m-instruct", cache) == location
    assert config.stat().st_mtime_ns == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no half-converted leftovers


def test_generates_working_code(builtin):
    from selftrain.evaluation.sandbox import Sandbox

    model, tok = load_model(builtin[0])
    prompt = "Write a Python function `add(a, b)` that returns the sum of a and b."
    (answer,) = generate(model, tok, [render_prompt(tok, prompt, "chat")], max_new_tokens=96)
    assert "def add" in answer.code
    assert Sandbox(timeout_s=10).run(answer.code, "assert add(2, 3) == 5").passed


def test_one_short_lora_run(builtin, tmp_path):
    from selftrain.training.sft import SFTConfig, run

    examples = [Example(i, f"Write a Python function `inc_{i}(x)` that adds {i} to x.",
                        f"def inc_{i}(x):\n    return x + {i}", f"Adds {i}.", "math", "accepted")
                for i in range(4)]
    result = run(SFTConfig(epochs=1, batch_size=2, max_length=256), examples, builtin[0], tmp_path / "adapter")
    assert result.steps == 2 and result.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    model, _ = load_model(builtin[0], adapter=str(tmp_path / "adapter"))  # loads and merges
    assert not hasattr(model, "peft_config")

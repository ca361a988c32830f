"""Tests for selftrain.evaluation.cache: an unchanged model evaluated the same way is
evaluated once; any change to its weights or to how it is evaluated evaluates again."""

import json
from dataclasses import replace

import pytest

from selftrain.config import load_settings
from selftrain.evaluation import cache, harness
from selftrain.evaluation.sandbox import Sandbox
from selftrain.evaluation.suites import Problem, Suite

SUITE = Suite(name="tiny", digest="d1", problems=(
    Problem("t/0", "Write add(a, b).", "add", "assert add(1, 2) == 3"),
    Problem("t/1", "Write neg(x).", "neg", "assert neg(1) == -1"),
))


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = harness.evaluate_model

    def spy(*args, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "evaluate_model", spy)
    return calls


def test_the_same_evaluation_is_reused_and_any_change_recomputes(workspace, tiny_model_dir, tmp_path, counted):
    settings = load_settings(workspace)
    sandbox = Sandbox(timeout_s=5, memory_mb=512, workers=2, allow_unsafe_execution=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")

    first = cache.evaluate_version(settings, str(tiny_model_dir), None, SUITE, sandbox)
    again = cache.evaluate_version(settings, str(tiny_model_dir), None, SUITE, sandbox)
    assert len(counted) == 1, "the second, identical evaluation must come from the cache"
    assert again == first and [i.task_id for i in again.items] == ["t/0", "t/1"]

    # Another token limit, another suite digest: evaluated again.
    cache.evaluate_version(replace(settings, max_new_tokens=8), str(tiny_model_dir), None, SUITE, sandbox)
    cache.evaluate_version(settings, str(tiny_model_dir), None, replace(SUITE, digest="d2"), sandbox)
    assert counted == [16, 8, 16]

    # The adapter is keyed by its content, not its path: new weights miss, a copy hits.
    key_v1 = cache.evaluation_key(str(tiny_model_dir), str(adapter), SUITE, x=1)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    assert cache.evaluation_key(str(tiny_model_dir), str(adapter), SUITE, x=1) != key_v1
    copy = tmp_path / "registered"
    copy.mkdir()
    for f in adapter.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert (cache.evaluation_key(str(tiny_model_dir), str(copy), SUITE, x=1)
            == cache.evaluation_key(str(tiny_model_dir), str(adapter), SUITE, x=1))

    # Switched off: always evaluated.
    cache.evaluate_version(replace(settings, evaluation_cache=False), str(tiny_model_dir), None, SUITE, sandbox)
    assert len(counted) == 4


def test_an_unreadable_entry_is_recomputed_and_replaced(tmp_path):
    result = harness.SuiteResult(items=(harness.ItemResult("a", True, True, "passed", "x = 1"),), suite="s")
    calls = []

    def compute():
        calls.append(1)
        return result

    (tmp_path / "k.json").write_text("{not json")
    got, hit = cache.cached(tmp_path, "k", compute)
    assert (got, hit, len(calls)) == (result, False, 1)
    assert json.loads((tmp_path / "k.json").read_text())["items"][0]["task_id"] == "a"
    got, hit = cache.cached(tmp_path, "k", compute)
    assert (got, hit, len(calls)) == (result, True, 1)
    assert not list(tmp_path.glob("*.tmp*"))

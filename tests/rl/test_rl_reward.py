"""Rewards: execution (fake and real sandbox), the spec's heuristic by hand, the mix, and the
learned reward model on the tiny Llama."""

from dataclasses import dataclass

import pytest

from selftrain.errors import SelftrainError
from selftrain.training import reward


@dataclass
class Result:
    passed: bool


class FakeSandbox:
    """Passes a run when every assert in its tests holds in plain Python (trusted test code only)."""

    def __init__(self):
        self.items = []

    def run_many(self, items):
        self.items += items
        out = []
        for program, tests in items:
            try:
                scope = {}
                exec(program + "\n" + tests, scope)
                out.append(Result(True))
            except BaseException:  # SystemExit too, as a real run would fail
                out.append(Result(False))
        return out


GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
TESTS = "import math\nassert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(2, 2) == 4\n"


def test_split_tests_gives_each_assert_its_setup():
    units = reward.split_tests(TESTS)
    assert units == ["import math\nassert add(1, 2) == 3\n", "import math\nassert add(0, 0) == 0\n",
                     "import math\nassert add(2, 2) == 4\n"]
    assert reward.split_tests("check(add)") == ["check(add)"]
    assert reward.split_tests("assert (") == ["assert ("]


def test_execution_reward_counts_asserts_and_handles_no_tests():
    sandbox = FakeSandbox()
    got = reward.execution_reward(["p"] * 5, [GOOD, WRONG, "not python at all (", "", "x = 1\nraise SystemExit(1)"],
                                  tests=[TESTS, TESTS, TESTS, TESTS, None], sandbox=sandbox)
    # WRONG passes only add(0, 0) == 0; invalid and empty code are never run.
    assert got == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.5])
    assert len(sandbox.items) == 7
    assert reward.execution_reward(["p"], ["x = 1"], sandbox=FakeSandbox()) == [1.0]


def test_execution_reward_in_the_real_sandbox():
    from selftrain.evaluation.sandbox import isolation_available

    if not isolation_available():
        pytest.skip("no bubblewrap sandbox here")
    assert reward.execution_reward(["p", "p"], [GOOD, WRONG], tests=[TESTS, TESTS]) == pytest.approx([1.0, 1 / 3])


def test_heuristic_reward_matches_the_spec_by_hand():
    got = reward.heuristic_reward(["return a + b", "add numbers", "write add"],
                                  ["return a + b", "this is wrong (", GOOD])
    # 1: .5 + .2 (valid) + .3·1 (same words) + .2·.5 (no indicator words) = 1.1 → 1.0
    # 2: .5 − .3 (invalid) + 0 + .2·((−1/8 + 1)/2) = .2875
    # 3: .5 + .2 (its code is valid) + .3·0 ("add" never stands alone as a token) + .1 = .8
    assert got == pytest.approx([1.0, 0.2875, 0.8])
    assert reward.quality_score("clean, readable and correct") == pytest.approx((3 / 8 + 1) / 2)
    assert reward.semantic_score("a b", "b c") == pytest.approx(1 / 3)


def test_mix_is_a_normalised_weighted_average():
    one = lambda p, c, **kw: [1.0] * len(c)  # noqa: E731
    zero = lambda p, c, **kw: [0.0] * len(c)  # noqa: E731
    assert reward.mix_rewards([(3, one), (1, zero), (0, zero)])(["p"], ["c"]) == [0.75]
    with pytest.raises(SelftrainError):
        reward.mix_rewards([(0, one)])


def _pairs(n):
    # Chosen answers define the function; rejected ones are prose. Learnable even by a tiny model.
    return [(f"Write function f{i}.", f"def f{i}(x):\n    return x + {i}\n", "I cannot help with that.")
            for i in range(n)]


def test_reward_model_refuses_too_few_pairs(tiny_model_dir, tmp_path):
    with pytest.raises(SelftrainError, match="at least 8 preference pairs"):
        reward.train_reward_model(_pairs(3), str(tiny_model_dir), tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_reward_model_trains_saves_and_scores(tiny_model_dir, tmp_path):
    config = reward.RewardModelConfig(epochs=4, batch_size=4, learning_rate=5e-3, dtype="float32", lora_r=2)
    result = reward.train_reward_model(_pairs(12), str(tiny_model_dir), tmp_path / "rm", config)
    assert result.n_eval >= 1 and result.n_train + result.n_eval == 12
    assert result.initial_eval_accuracy == 0.0  # a zero head ties every pair
    assert result.eval_accuracy == 1.0 and len(result.history) == 4
    scorer = reward.load_reward_model(tmp_path / "rm")
    good, bad = scorer(["Write function f99."] * 2, ["def f99(x):\n    return x + 99\n", "I cannot help with that."])
    assert 0 < bad < good < 1

"""Tests for selftrain.evaluation.harness: prompts per style, programs from answers, scoring
in the real sandbox, and generation with the tiny model from conftest."""

import pytest

from selftrain.evaluation.harness import (
    COMPLETE_FUNCTION,
    ItemResult,
    SuiteResult,
    answer_code,
    build_program,
    build_prompt,
    evaluate_model,
    score_answers,
)
from selftrain.evaluation.sandbox import Sandbox
from selftrain.evaluation.suites import Problem, Suite, load_suite

SIGNATURE = Problem(
    "T/0", 'import math\n\n\ndef helper(x):\n    return x * 2\n\n\ndef double_sqrt(x: float) -> float:\n'
           '    """Twice the square root of x."""\n', "double_sqrt",
    "def check(candidate):\n    assert candidate(4) == 4.0\n    assert candidate(9) == 6.0\n\ncheck(double_sqrt)\n",
    reference='def double_sqrt(x: float) -> float:\n    return helper(math.sqrt(x))\n')


@pytest.fixture(scope="module")
def sandbox():
    # Our own programs: bubblewrap where it exists, plain rlimits elsewhere.
    return Sandbox(timeout_s=5, memory_mb=512, workers=2, allow_unsafe_execution=True)


class ChatTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_prompts_per_style():
    assert build_prompt(None, SIGNATURE, "signature_completion", "chat") == SIGNATURE.prompt.rstrip()
    chat = build_prompt(ChatTokenizer(), SIGNATURE, "signature_chat", "instruction")  # always the chat template
    assert chat == f"<user>{COMPLETE_FUNCTION.format(prompt=SIGNATURE.prompt)}</user><assistant>"
    assert "```python\nimport math" in chat and chat.count("```") == 3
    assert build_prompt(ChatTokenizer(), SIGNATURE, "request", "chat").startswith("<user>import math")
    assert build_prompt(None, SIGNATURE, "request", "instruction").startswith("### Instruction:\nimport math")


def test_answer_code_per_style():
    text = "Sure!\n```python\ndef double_sqrt(x):\n    return 2 * x ** 0.5\n```\nIt doubles."
    assert answer_code(text, SIGNATURE, "signature_chat") == "def double_sqrt(x):\n    return 2 * x ** 0.5"
    continuation = "\n    return helper(math.sqrt(x))\n\n\ndef other():\n    pass\n#x"
    assert answer_code(continuation, SIGNATURE, "signature_completion") == (
        SIGNATURE.prompt.rstrip() + "\n    return helper(math.sqrt(x))\n\n")


def test_build_program_keeps_the_prompts_helpers():
    full = build_program(SIGNATURE.reference, SIGNATURE, "signature_chat")
    assert full.startswith(SIGNATURE.prompt.rstrip()) and full.rstrip().endswith("return helper(math.sqrt(x))")
    body = build_program("return helper(math.sqrt(x))", SIGNATURE, "signature_chat")
    assert body.endswith('"""\n    return helper(math.sqrt(x))\n')
    assert build_program("", SIGNATURE, "signature_chat") == SIGNATURE.prompt
    assert build_program("x = 1", SIGNATURE, "request") == "x = 1"


def test_score_answers(sandbox):
    suite = Suite("mini", (
        SIGNATURE,
        Problem("T/1", 'def inc(n):\n    """n + 1"""\n', "inc", "assert inc(1) == 2",
                reference="def inc(n):\n    return n + 1", category="math"),
        Problem("T/2", 'def neg(x):\n    """-x"""\n', "neg", "", reference="def neg(x):\n    return -x"),  # no tests
    ), digest="d", prompt_style="signature_chat")
    answers = [
        [SIGNATURE.reference, "def double_sqrt(x):\n    return x", "return helper(math.sqrt(x))"],
        ["def inc(n):\n    return n - 1", "def inc(n):\n    return n + 1", "def inc(n)\n    return n + 1"],
        ["def neg(x):\n    return -x", "", ""],
    ]
    result = score_answers(suite, answers, sandbox, temperature=0.8)
    first, second, third = result.items
    assert (first.passed, first.n_samples, first.n_correct, first.status) == (True, 3, 2, "passed")
    assert first.bleu == pytest.approx(1.0) and first.time_complexity == "O(1)"
    assert (second.passed, second.n_correct, second.status, second.category) == (False, 1, "failed", "math")
    assert second.error.startswith("AssertionError") and second.solution_ran
    assert (third.tested, third.passed, third.status, third.n_correct, third.solution_ran) == (
        False, False, "untested", 0, True)
    assert result.tested == (first, second)
    assert result.pass_rate == 0.5 and result.syntax_rate == 1.0
    assert result.pass_at_k(1) == pytest.approx((2 / 3 + 1 / 3) / 2)
    metrics = result.metrics()
    assert metrics["pass_at_k"] == pytest.approx({"1": 0.5}) and metrics["n_tested"] == 2
    assert (metrics["suite"], metrics["prompt_style"], metrics["temperature"]) == ("mini", "signature_chat", 0.8)
    assert [row["task_id"] for row in result.to_json()] == ["T/0", "T/1", "T/2"]


def test_score_answers_needs_an_answer_per_problem(sandbox):
    with pytest.raises(ValueError):
        score_answers(load_suite("demo", limit=2), [["x = 1"]], sandbox)


def test_item_result_keeps_the_loops_constructor():
    item = ItemResult("t", True, True, "passed", "code")  # the five fields loop.py and older rows know
    assert (item.n_correct, item.n_samples, item.tested) == (1, 1, True)
    result = SuiteResult((item, ItemResult("u", False, False, "failed", "")))
    assert (result.pass_rate, result.syntax_rate) == (0.5, 0.5)
    assert {"pass_rate", "syntax_rate", "n"} <= set(result.metrics())


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from selftrain.models.base import load_model

    return load_model(str(tiny_model_dir), "float32")


def test_evaluate_model_greedy_and_sampled(tiny, sandbox):
    model, tokenizer = tiny
    suite = load_suite("demo", limit=3)
    greedy = evaluate_model(model, tokenizer, suite, sandbox, prompt_format="chat", max_new_tokens=8, batch_size=2)
    assert [i.task_id for i in greedy.items] == ["eval-001", "eval-002", "eval-003"]
    assert all(i.n_samples == 1 and not i.passed for i in greedy.items)  # a random model solves nothing
    stages = []
    sampled = evaluate_model(model, tokenizer, suite, sandbox, prompt_format="chat", max_new_tokens=8,
                             batch_size=2, samples=3, temperature=1.0, seed=1,
                             progress=lambda stage, done, total: stages.append((stage, done, total)))
    assert all(i.n_samples == 3 for i in sampled.items)
    assert ("generate", 3, 3) in stages and ("run tests", 9, 9) in stages
    again = evaluate_model(model, tokenizer, suite, sandbox, prompt_format="chat", max_new_tokens=8,
                           batch_size=2, samples=3, temperature=1.0, seed=1)
    assert [i.code for i in again.items] == [i.code for i in sampled.items]  # same seed, same samples


def test_evaluate_model_refuses_greedy_samples(tiny, sandbox):
    with pytest.raises(ValueError, match="temperature"):
        evaluate_model(*tiny, load_suite("demo", limit=1), sandbox, prompt_format="chat", max_new_tokens=4,
                       batch_size=1, samples=2, temperature=0.0)


def test_completion_bleu_leaves_out_the_shared_prompt(sandbox):
    # A stub that answers nothing shares the whole prompt with the reference: BLEU 0.68 if the
    # prompt counted, 0 once it does not.
    suite = load_suite("humaneval", limit=1, prompt_style="signature_completion")
    (problem,) = suite.problems
    stub = problem.prompt.rstrip() + "\n    return False\n"
    (item,) = score_answers(suite, [[stub]], sandbox).items
    assert item.bleu == 0.0 and not item.passed
    (item,) = score_answers(suite, [[problem.reference]], sandbox).items
    assert item.bleu == pytest.approx(1.0) and item.passed

"""Tests for selftrain.evaluation.suites: HumanEval, JSONL files, the regression suite."""

import json
from dataclasses import dataclass

import pytest

from selftrain.errors import SelftrainError
from selftrain.evaluation.suites import PROMPT_STYLES, Problem, load_suite, regression_suite


def test_humaneval_has_164_problems_with_tests_and_references():
    suite = load_suite("humaneval")
    assert len(suite.problems) == 164 and suite.prompt_style == "signature_chat"
    first = suite.problems[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.prompt.startswith("from typing import List") and first.prompt.endswith('"""\n')
    assert first.tests.rstrip().endswith("check(has_close_elements)")
    assert first.reference.startswith(first.prompt) and "return False" in first.reference
    assert len({p.task_id for p in suite.problems}) == 164
    assert len(suite.digest) == 64 and load_suite("humaneval", limit=5).digest == suite.digest


def test_limit_and_prompt_style_override():
    suite = load_suite("humaneval", limit=3, prompt_style="signature_completion")
    assert [p.task_id for p in suite.problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert suite.prompt_style == "signature_completion"
    assert load_suite("demo").prompt_style == "request"
    with pytest.raises(SelftrainError, match="Unknown prompt style 'fancy'"):
        load_suite("demo", prompt_style="fancy")
    assert set(PROMPT_STYLES) == {"request", "signature_chat", "signature_completion"}


def _write(tmp_path, *lines):
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


GOOD = {"task_id": "t1", "prompt": "Write `f`.", "entry_point": "f", "tests": "assert f() == 1"}


def test_custom_jsonl_suite(tmp_path):
    path = _write(tmp_path, GOOD, "", {**GOOD, "task_id": "t2", "category": "math", "reference": "def f(): return 1"})
    suite = load_suite(str(path))
    assert [p.task_id for p in suite.problems] == ["t1", "t2"]
    assert suite.problems[1] == Problem("t2", "Write `f`.", "f", "assert f() == 1", "def f(): return 1", "math")


@pytest.mark.parametrize("line, message", [
    ({**GOOD, "tests": ""}, "line 1 (item t1): field 'tests' must be a non-empty string"),
    ({k: v for k, v in GOOD.items() if k != "entry_point"}, "line 1 (item t1): field 'entry_point' must be"),
    ({**GOOD, "prompt": 3}, "line 1 (item t1): field 'prompt' must be a non-empty string"),
    ({**GOOD, "category": ["x"]}, "line 1 (item t1): field 'category' must be a string when given"),
    ({**GOOD, "reference": 1}, "line 1 (item t1): field 'reference' must be a string"),
    ("{not json", "line 1: not valid JSON"),
    ("[1, 2]", "line 1: expected a JSON object"),
])
def test_malformed_item_names_the_item_and_field(tmp_path, line, message):
    with pytest.raises(SelftrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(str(_write(tmp_path, line)))


def test_duplicate_ids_empty_and_missing_suites(tmp_path):
    with pytest.raises(SelftrainError, match="line 2: task_id 't1' appears twice"):
        load_suite(str(_write(tmp_path, GOOD, GOOD)))
    with pytest.raises(SelftrainError, match="has no problems"):
        load_suite(str(_write(tmp_path, "")))
    with pytest.raises(SelftrainError, match="Could not read the evaluation suite"):
        load_suite(str(tmp_path / "nope.jsonl"))
    with pytest.raises(SelftrainError, match="limit"):
        load_suite("demo", limit=-1)


@dataclass
class Row:  # an Interaction-like object, as the store returns them
    id: int
    prompt: str
    code: str = ""
    tests: str | None = None
    entry_point: str | None = None
    external_id: str | None = None
    category: str | None = None


def test_regression_suite_from_interactions():
    records = [
        Row(1, "Write `add(a, b)`.", "def add(a, b):\n    return a + b", "assert add(1, 2) == 3", "add"),
        {"id": 2, "prompt": "Explain recursion.", "code": "", "tests": None},               # nothing to check
        {"external_id": "ext-3", "prompt": "Write `neg(x)`.", "code": "def neg(x):\n    return -x"},  # no tests
        Row(4, "  write `ADD(a, b)`. ", "def add(a, b): return b + a", "assert add(0, 0) == 0"),  # same prompt
        Row(5, "Write `neg(x)`.", "def neg(x): return 0 - x", "assert neg(1) == -1", "neg", category="math"),
        {"task_id": "mine", "prompt": "", "code": "x = 1", "tests": "assert x"},              # no prompt
    ]
    suite = regression_suite(records)
    assert suite.name == "regression" and suite.prompt_style == "request"
    assert [p.task_id for p in suite.problems] == ["interaction-1", "interaction-5"]
    first, second = suite.problems
    assert (first.tests, first.reference, first.entry_point) == ("assert add(1, 2) == 3", records[0].code, "add")
    # the tested record replaced the reference-only one with the same prompt
    assert (second.has_tests, second.category) == (True, "math")
    assert regression_suite(records).digest == suite.digest != regression_suite(records[:1]).digest


def test_regression_suite_keeps_untested_answers_as_references():
    suite = regression_suite([{"external_id": "a", "prompt": "Write `neg(x)`.", "code": "def neg(x): return -x"}])
    (item,) = suite.problems
    assert (item.task_id, item.has_tests, item.tests, item.reference) == ("a", False, "", "def neg(x): return -x")
    assert regression_suite([]).problems == ()

"""All 164 canonical HumanEval solutions pass in our sandbox, and wrong ones fail (~8 s each)."""

import pytest

from selftrain.evaluation.harness import score_answers
from selftrain.evaluation.sandbox import Sandbox, isolation_available
from selftrain.evaluation.suites import load_suite

pytestmark = pytest.mark.skipif(not isolation_available(), reason="needs the bubblewrap sandbox")


@pytest.fixture(scope="module")
def humaneval():
    return load_suite("humaneval")


def test_every_canonical_solution_passes(humaneval):
    results = Sandbox(timeout_s=20, workers=4).run_many([(p.reference, p.tests) for p in humaneval.problems])
    failed = [(p.task_id, r.status, r.stderr[-300:]) for p, r in zip(humaneval.problems, results) if not r.passed]
    assert failed == []
    assert len(results) == 164


def test_wrong_solutions_fail(humaneval):
    # the prompt's stub with `return None` as its body: a valid program that answers nothing
    results = Sandbox(timeout_s=20, workers=4).run_many(
        [(p.prompt + "    return None\n", p.tests) for p in humaneval.problems])
    assert [p.task_id for p, r in zip(humaneval.problems, results) if r.passed] == []
    assert {r.status for r in results} == {"failed"}


def test_canonical_solutions_scored_as_chat_answers(humaneval):
    # A chat answer repeats the whole function; build_program puts the prompt (and its helpers)
    # first. HumanEval/38's decode_cyclic needs the prompt's encode_cyclic, HumanEval/50 likewise.
    suite = load_suite("humaneval", limit=60)
    result = score_answers(suite, [[p.reference] for p in suite.problems],
                           Sandbox(timeout_s=20, workers=4))
    assert result.pass_rate == 1.0 and result.metrics()["bleu"] == pytest.approx(1.0)

from types import SimpleNamespace

import pytest

from selftrain.data.curate import curate_interactions, normalize, read_snapshot, write_snapshot
from selftrain.errors import SelftrainError
from selftrain.data.ingest import read_interactions
from selftrain.store.records import FeedbackSummary

GOOD = "def double(x: int) -> int:\n    \"\"\"Twice x.\"\"\"\n    return 2 * x\n"


def item(code=GOOD, prompt="Write a Python function `double(x)` that returns twice x.", iid=1,
         entry_point="double", explanation="Multiplies by two.", **feedback):
    interaction = SimpleNamespace(id=iid, prompt=prompt, code=code, explanation=explanation,
                                  category="math", entry_point=entry_point)
    return interaction, FeedbackSummary(**feedback)


def test_endorsed_answers_and_corrections_become_targets():
    fixed = GOOD.replace("2 * x", "x + x")
    result = curate_interactions([item(accepted=True), item(rating=4, iid=2, prompt="other prompt here"),
                                  item(accepted=False, corrected_code=fixed, iid=3, prompt="third")])
    assert [e.target for e in result.examples] == ["accepted", "rated", "corrected"]
    corrected = result.examples[2]
    assert corrected.code == fixed and corrected.explanation == ""  # the old explanation described the bug


@pytest.mark.parametrize("feedback, reason", [
    ({"accepted": False}, "rejected"),
    ({"rating": 2}, "low rating"),
    ({"rating": 3}, "no endorsement"),
    ({}, "no endorsement"),
    ({"accepted": True, "rating": 1}, "low rating"),
])
def test_unendorsed_answers_never_become_targets(feedback, reason):
    result = curate_interactions([item(**feedback)])
    assert result.examples == [] and result.dropped == {reason: 1}


def test_filters_explain_each_drop():
    items = [item(accepted=True),
             item(accepted=True, iid=2),                                   # duplicate
             item(accepted=True, iid=3, code="def broken(:\n  pass", prompt="p3 is long enough here"),
             item(accepted=True, iid=4, code="x=1", prompt="hi", explanation=""),          # too short
             item(accepted=True, iid=5, prompt="Eval prompt  TEXT", code=GOOD + "# 5"),
             item(accepted=True, iid=6, prompt="different", entry_point="held_out", code=GOOD + "# 6")]
    result = curate_interactions(items, exclude_prompts={normalize("eval prompt text")},
                                 exclude_entry_points={"held_out"})
    assert len(result.examples) == 1
    assert result.dropped == {"duplicate": 1, "syntax error": 1, "length": 1,
                              "overlaps evaluation suite": 2}
    assert result.stats()["input"] == 6 and result.stats()["kept"] == 1


def test_snapshot_is_content_addressed(tmp_path):
    examples = curate_interactions([item(accepted=True)]).examples
    digest, path = write_snapshot(examples, tmp_path)
    again, _ = write_snapshot(examples, tmp_path / "other")
    assert digest == again and len(digest) == 64
    assert read_snapshot(path) == examples


def test_ingest_reports_file_and_line(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"prompt": "ok", "response": {"code": "x = 1"}}\n\n{"prompt": "p", "feedback": {"rating": 7}}\n')
    with pytest.raises(SelftrainError, match=r"in.jsonl, line 3: feedback 'rating' must be from 1 to 5"):
        read_interactions(f)
    f.write_text('{"prompt": "ok"\n')
    with pytest.raises(SelftrainError, match=r"line 1: not valid JSON"):
        read_interactions(f)
    with pytest.raises(SelftrainError, match="Could not read"):
        read_interactions(tmp_path / "missing.jsonl")


def test_bundled_demo_data_is_complete():
    from selftrain.cli import DEMO_INTERACTIONS
    from selftrain.evaluation.suites import load_suite

    records = read_interactions(DEMO_INTERACTIONS)
    assert len(records) >= 120 and all(r.tests and r.feedback for r in records)
    suite = load_suite("demo")
    assert len(suite.problems) >= 40
    assert not {r.entry_point for r in records} & {p.entry_point for p in suite.problems}

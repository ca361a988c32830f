"""Collecting: feedback decides targets, rejections become preference pairs, and external
datasets come in through a field mapping with every malformed line reported."""

import json
from types import SimpleNamespace

import pytest

from selftrain.data.collect import parse_mapping, preference_pairs, read_external
from selftrain.errors import SelftrainError
from selftrain.store.records import FeedbackSummary


def item(iid, *, code, prompt="Write a Python function `inc(x)` that adds one to x.", **feedback):
    return SimpleNamespace(id=iid, prompt=prompt, code=code, explanation=""), FeedbackSummary(**feedback)


def test_preference_pairs_from_corrections_and_accepted_answers():
    good = "def inc(x):\n    return x + 1\n"
    items = [item(1, code="def inc(x):\n    return x - 1\n", accepted=False, corrected_code=good),
             item(2, code="def inc(x):\n    return x\n", rating=1),
             item(3, code=good, accepted=True),
             item(4, code="def inc(x):\n    return 0\n", accepted=False, prompt="another prompt entirely")]
    pairs = preference_pairs(items)
    assert [(p.interaction_id, p.source) for p in pairs] == [(1, "correction"), (2, "accepted")]
    assert all(p.chosen == good for p in pairs)
    assert pairs[1].rejected == "def inc(x):\n    return x\n"


def test_external_jsonl_with_mapping_skips_and_reports_bad_lines(tmp_path):
    f = tmp_path / "ext.jsonl"
    rows = [{"question": "Write `inc(x)` adding one to x.", "solution": "def inc(x):\n    return x + 1\n"},
            "not json", {"question": "no code here"}, {"question": 3, "solution": "x = 1"},
            {"prompt": "Nested", "question": "Nested", "response": {"code": "y = 2"}}]
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    data = read_external(f, parse_mapping("prompt=question,code=solution"))
    assert data.rows == 5 and [c.ref for c in data.candidates] == ["ext.jsonl:1"]
    assert data.errors[0].startswith(f"{f}, line 2: not valid JSON")
    assert "line 3: field 'code' (column 'solution') must be a non-empty string, missing" in data.errors[1]
    assert "line 4: field 'prompt' (column 'question')" in data.errors[2]
    assert len(data.errors) == 4
    with pytest.raises(SelftrainError, match=r"ext.jsonl, line 2: not valid JSON"):
        read_external(f, parse_mapping("prompt=question,code=solution"), strict=True)
    # Without a mapping the interaction format (response.code) is understood.
    assert [c.code for c in read_external(f).candidates] == ["y = 2"]


def test_external_csv_and_saved_hugging_face_dataset(tmp_path):
    csv_file = tmp_path / "ext.csv"
    csv_file.write_text('prompt,code,category\n"Write `one()`","def one():\n    return 1\n",math\n"bad",,x\n')
    data = read_external(csv_file)
    assert [(c.prompt, c.category) for c in data.candidates] == [("Write `one()`", "math")]
    assert data.errors == [f"{csv_file}, line 5: field 'code' (column 'code') must be a non-empty string, missing."]

    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_list([{"instruction": "Write `two()`", "output": "def two():\n    return 2\n"}]) \
        .save_to_disk(str(folder))
    data = read_external(folder, parse_mapping("prompt=instruction,code=output"))
    assert [c.code for c in data.candidates] == ["def two():\n    return 2\n"] and data.candidates[0].ref == "hf:1"


def test_bad_mappings_and_missing_files_are_one_sentence(tmp_path):
    with pytest.raises(SelftrainError, match="FIELD=COLUMN"):
        parse_mapping("prompt:question")
    with pytest.raises(SelftrainError, match="no such file"):
        read_external(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SelftrainError, match="holds no examples"):
        read_external(tmp_path / "empty.jsonl")

"""The bundled Acme task corpus (selftrain/resources/tasks/acme_tasks.jsonl) holds its invariants.

Uses the validation functions of scripts/check_task_corpus.py. Only a deterministic sample of
SAMPLE_SIZE references is executed here (the full run is `python scripts/check_task_corpus.py`).
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SIZE = 30


def _load_checker():
    name = "check_task_corpus"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "check_task_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is created
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    tasks, problems = checker.load_tasks(checker.TASKS_PATH)
    assert problems == []
    return tasks


def test_corpus_is_large_enough(tasks):
    assert len(tasks) >= checker.MIN_TASKS >= 300


def test_every_task_passes_the_static_checks(tasks):
    problems = [p for task in tasks for p in checker.validate_task(task)]
    assert problems == []


def test_task_ids_and_entry_points_are_unique(tasks):
    assert checker.check_uniqueness(tasks) == []


def test_split_invariants(tasks):
    assert checker.check_splits(tasks) == []
    counts = checker.split_counts(tasks)
    assert set(counts) == set(checker.CONVENTIONS)
    for name, c in counts.items():
        assert c["train"] > 0 and c["heldout"] > 0, name
        assert set(c) <= {"train", "heldout"}
    held = sum(t["split"] == "heldout" for t in tasks) / len(tasks)
    assert checker.HELDOUT_SHARE[0] <= held <= checker.HELDOUT_SHARE[1]
    explicit = Counter((t["split"], t["explicit"]) for t in tasks)
    assert explicit[("train", True)] > 0 and explicit[("heldout", True)] > 0


def test_no_heldout_task_leaks_into_training(tasks):
    assert checker.near_duplicates(tasks) == []
    assert checker.max_cross_split_similarity(tasks) < checker.NEAR_DUPLICATE_JACCARD
    assert checker.entry_point_leaks(tasks) == []
    train = {t["entry_point"] for t in tasks if t["split"] == "train"}
    held = {t["entry_point"] for t in tasks if t["split"] == "heldout"}
    assert not train & held


def test_every_task_pins_its_convention(tasks):
    missing = [t["task_id"] for t in tasks if not checker.pins_convention(t["tests"], t["convention"])]
    assert missing == []


def test_sample_of_references_passes_its_tests(tasks):
    ordered = sorted(tasks, key=lambda t: t["task_id"])
    step = max(1, len(ordered) // SAMPLE_SIZE)
    sample = ordered[::step][:SAMPLE_SIZE]
    assert len(sample) == min(SAMPLE_SIZE, len(ordered))
    assert checker.run_references(sample, jobs=2) == []


# The checker itself catches what it is meant to catch.

def _task(**changes) -> dict:
    task = {"task_id": "acme-999", "convention": "record_id",
            "prompt": "Write `fmt_id(n: int) -> str` that formats an Acme record id.",
            "entry_point": "fmt_id", "reference": "def fmt_id(n: int) -> str:\n    return f'ACM-{n:06d}'",
            "tests": "assert fmt_id(1) == 'ACM-000001'\nassert fmt_id(42) == 'ACM-000042'\n"
                     "assert fmt_id(7) != ''",
            "split": "train", "explicit": False}
    task.update(changes)
    return task


def test_checker_accepts_a_good_task():
    assert checker.validate_task(_task()) == []


@pytest.mark.parametrize("changes, fragment", [
    ({"tests": "assert fmt_id(1)\nassert fmt_id(2)\nassert fmt_id(3) != ''"}, "marker"),
    ({"tests": "assert fmt_id(1) == 'ACM-000001'"}, "asserts"),
    ({"split": "test"}, "split"),
    ({"explicit": "no"}, "type"),
    ({"convention": "nope"}, "unknown convention"),
    ({"prompt": "Write a function that formats an id."}, "backticks"),
    ({"reference": "def other(n):\n    return n"}, "does not define"),
    ({"reference": "import os\ndef fmt_id(n):\n    return os.sep"}, "forbidden import"),
])
def test_checker_rejects_bad_tasks(changes, fragment):
    problems = checker.validate_task(_task(**changes))
    assert any(fragment in p for p in problems), problems


def test_checker_finds_near_duplicates_across_splits():
    a = _task(task_id="acme-001", entry_point="fmt_a", prompt="Write `fmt_a(n: int) -> str` for ids.")
    b = _task(task_id="acme-002", entry_point="fmt_b", split="heldout",
              prompt="Write `fmt_b(n: int) -> str` for ids.")
    c = _task(task_id="acme-003", entry_point="other", split="heldout",
              prompt="Write `other(text: str) -> bool` that validates a totally different thing.")
    pairs = checker.near_duplicates([a, b, c], threshold=0.5)
    assert [(h, t) for h, t, _ in pairs] == [("acme-002", "acme-001")]


def test_checker_runs_references_and_reports_failures():
    good, bad = _task(task_id="acme-001"), _task(task_id="acme-002", reference="def fmt_id(n):\n    return 'x'")
    problems = checker.run_references([good, bad], jobs=2)
    assert len(problems) == 1 and problems[0].startswith("acme-002")

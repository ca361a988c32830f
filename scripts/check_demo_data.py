#!/usr/bin/env python3
"""Validate the bundled demo data: selftrain/resources/demo_interactions.jsonl and demo_eval.jsonl.

Checks: every line is a JSON object with the required fields and types; ids are unique; eval
entry points are unique and disjoint from the interactions' entry points; no eval prompt is a
near-duplicate of an interaction prompt; feedback is consistent with its kind; the *target* code
of every interaction (corrected_code if present, else response.code) passes its tests, except for
rejected answers without a correction, which have no target; every rejected response.code
(accepted: false) FAILS its tests at run time (it compiles and defines the entry point); every eval
reference passes its tests.

The code and tests are our own trusted files, so they are run with the current interpreter.
Standard library only. Exits 0 and prints OK when everything holds, 1 otherwise.

Usage: python scripts/check_demo_data.py [--interactions PATH] [--eval PATH] [--jobs N]
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "selftrain" / "resources"
CATEGORIES = ("strings", "lists", "dicts", "math", "parsing", "datetime", "files_io",
              "algorithms", "validation", "classes")
MIN_PER_CATEGORY = {"interactions": 10, "eval": 2}
TIMEOUT_S = 10
NEAR_DUPLICATE_RATIO = 0.8
# Code and tests must stay pure: no file system, network, processes or randomness.
FORBIDDEN = [
    (re.compile(r"\bopen\s*\("), "open()"),
    (re.compile(r"^\s*(import|from)\s+(os|sys|random|socket|subprocess|shutil|tempfile|pathlib|"
                r"requests|http|urllib\.request|secrets|threading|multiprocessing|time)\b", re.M),
     "forbidden import"),
    (re.compile(r"\b__import__\s*\("), "__import__()"),
    (re.compile(r"\b(eval|exec)\s*\("), "eval()/exec()"),
]


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


def read_jsonl(path: Path, checker: Checker) -> list[tuple[str, dict]]:
    """(where, object) for every non-blank line; parse problems are recorded."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        checker.fail(str(path), f"cannot read: {exc}")
        return []
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        where = f"{path.name}:{n}"
        if not line.strip():
            checker.fail(where, "blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            checker.fail(where, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            checker.fail(where, "not a JSON object")
            continue
        records.append((where, obj))
    if not records:
        checker.fail(str(path), "no records")
    return records


def require(checker: Checker, where: str, obj: dict, key: str, kinds, *, nullable=False,
            non_empty=True) -> bool:
    if key not in obj:
        checker.fail(where, f"missing field '{key}'")
        return False
    value = obj[key]
    if value is None:
        if nullable:
            return True
        checker.fail(where, f"field '{key}' is null")
        return False
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        checker.fail(where, f"field '{key}' has type {type(value).__name__}")
        return False
    if non_empty and isinstance(value, str) and not value.strip():
        checker.fail(where, f"field '{key}' is empty")
        return False
    return True


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def check_common(checker: Checker, where: str, obj: dict, code_field: str, code: str | None) -> bool:
    ok = all([
        require(checker, where, obj, "category", str),
        require(checker, where, obj, "prompt", str),
        require(checker, where, obj, "entry_point", str),
        require(checker, where, obj, "tests", str),
    ])
    if not ok:
        return False
    if obj["category"] not in CATEGORIES:
        checker.fail(where, f"unknown category {obj['category']!r}")
        ok = False
    entry = obj["entry_point"]
    if not entry.isidentifier():
        checker.fail(where, f"entry_point {entry!r} is not an identifier")
        ok = False
    if f"`{entry}" not in obj["prompt"]:
        checker.fail(where, f"prompt does not name `{entry}` in backticks")
        ok = False
    tests = obj["tests"]
    if len(re.findall(r"^\s*assert\b", tests, re.M)) < 3:
        checker.fail(where, "tests need at least 3 assert statements")
        ok = False
    if not re.search(rf"\b{re.escape(entry)}\b", tests):
        checker.fail(where, "tests never call the entry point")
        ok = False
    for label, source in ((code_field, code), ("tests", tests)):
        if source is None:
            continue
        for pattern, what in FORBIDDEN:
            if pattern.search(source):
                checker.fail(where, f"{label} uses {what}")
                ok = False
        try:
            compile(source, f"<{where} {label}>", "exec")
        except SyntaxError as exc:
            checker.fail(where, f"{label} does not compile: {exc}")
            ok = False
    return ok


def feedback_kind(feedback: dict) -> str:
    if feedback.get("accepted") is True:
        return "correct"
    if feedback.get("accepted") is None:
        return "clumsy"
    return "buggy_corrected" if feedback.get("corrected_code") else "buggy_uncorrected"


def check_interaction(checker: Checker, where: str, obj: dict) -> bool:
    ok = require(checker, where, obj, "id", str) and require(checker, where, obj, "user", str)
    if not require(checker, where, obj, "response", dict):
        return False
    response = obj["response"]
    ok = require(checker, where, response, "code", str) and ok
    ok = require(checker, where, response, "explanation", str) and ok
    if not require(checker, where, obj, "feedback", dict):
        return False
    fb = obj["feedback"]
    ok = require(checker, where, fb, "rating", int) and ok
    if "accepted" not in fb:
        checker.fail(where, "missing field 'accepted'")
        ok = False
    elif fb["accepted"] not in (True, False, None):
        checker.fail(where, "field 'accepted' must be true, false or null")
        ok = False
    ok = require(checker, where, fb, "corrected_code", str, nullable=True) and ok
    ok = require(checker, where, fb, "comment", str) and ok
    if not ok:
        return False
    ok = check_common(checker, where, obj, "response.code", response["code"])
    if fb["corrected_code"] is not None:
        ok = check_common(checker, where, obj, "corrected_code", fb["corrected_code"]) and ok
    rating, accepted, corrected = fb["rating"], fb["accepted"], fb["corrected_code"]
    if not 1 <= rating <= 5:
        checker.fail(where, f"rating {rating} out of range")
        ok = False
    if accepted is True and (rating < 4 or corrected is not None):
        checker.fail(where, "accepted answers need rating 4-5 and no corrected_code")
        ok = False
    if accepted is False and rating > 2:
        checker.fail(where, "rejected answers need rating 1-2")
        ok = False
    if accepted is None and (rating != 3 or corrected is not None):
        checker.fail(where, "unjudged (clumsy) answers need rating 3 and no corrected_code")
        ok = False
    if corrected is not None and corrected.strip() == response["code"].strip():
        checker.fail(where, "corrected_code is identical to the response")
        ok = False
    return ok


def check_eval(checker: Checker, where: str, obj: dict) -> bool:
    ok = require(checker, where, obj, "task_id", str)
    ok = require(checker, where, obj, "reference", str) and ok
    if "difficulty" in obj and obj["difficulty"] not in ("easy", "medium", "hard"):
        checker.fail(where, f"unknown difficulty {obj['difficulty']!r}")
        ok = False
    if not ok:
        return False
    return check_common(checker, where, obj, "reference", obj["reference"])


def run_python(source: str) -> tuple[bool, str]:
    """(passed, detail) for running source in a fresh interpreter."""
    try:
        proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT_S}s"
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=Path, default=RESOURCES / "demo_interactions.jsonl")
    parser.add_argument("--eval", type=Path, default=RESOURCES / "demo_eval.jsonl")
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args(argv)
    checker = Checker()

    interactions = read_jsonl(args.interactions, checker)
    evals = read_jsonl(args.eval, checker)
    good_interactions = [(w, o) for w, o in interactions if check_interaction(checker, w, o)]
    good_evals = [(w, o) for w, o in evals if check_eval(checker, w, o)]

    for label, records, key in (("interaction id", interactions, "id"),
                                ("eval task_id", evals, "task_id")):
        seen: dict = {}
        for where, obj in records:
            value = obj.get(key)
            if value in seen:
                checker.fail(where, f"duplicate {label} {value!r} (first at {seen[value]})")
            seen.setdefault(value, where)
    eval_entries: dict = {}
    for where, obj in evals:
        entry = obj.get("entry_point")
        if entry in eval_entries:
            checker.fail(where, f"duplicate eval entry_point {entry!r} (first at {eval_entries[entry]})")
        eval_entries.setdefault(entry, where)
    interaction_entries = {obj.get("entry_point"): where for where, obj in interactions}
    for entry in sorted(set(eval_entries) & set(interaction_entries), key=str):
        checker.fail(eval_entries[entry], f"entry_point {entry!r} also used by interaction "
                                          f"at {interaction_entries[entry]}")
    for ewhere, eobj in good_evals:
        for iwhere, iobj in good_interactions:
            matcher = difflib.SequenceMatcher(None, eobj["prompt"].lower(), iobj["prompt"].lower())
            if matcher.real_quick_ratio() >= NEAR_DUPLICATE_RATIO and \
                    matcher.quick_ratio() >= NEAR_DUPLICATE_RATIO and \
                    matcher.ratio() >= NEAR_DUPLICATE_RATIO:
                checker.fail(ewhere, f"prompt is a near-duplicate of the interaction at {iwhere}")

    # Execution checks: (where, description, source, must_pass)
    jobs: list[tuple[str, str, str, bool]] = []
    for where, obj in good_interactions:
        fb, code, tests = obj["feedback"], obj["response"]["code"], obj["tests"]
        target = fb["corrected_code"] if fb["corrected_code"] is not None else (
            None if fb["accepted"] is False else code)
        if target is not None:
            label = "corrected_code" if fb["corrected_code"] is not None else "response.code"
            jobs.append((where, f"{label} should pass its tests", target + "\n\n" + tests, True))
        if fb["accepted"] is False:
            entry = obj["entry_point"]
            jobs.append((where, "rejected response.code should define the entry point",
                         f"{code}\n\nassert callable({entry})", True))
            jobs.append((where, "rejected response.code should FAIL its tests",
                         code + "\n\n" + tests, False))
    for where, obj in good_evals:
        jobs.append((where, "reference should pass its tests",
                     obj["reference"] + "\n\n" + obj["tests"], True))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: run_python(job[2]), jobs))
    for (where, description, _, must_pass), (passed, detail) in zip(jobs, results):
        if passed != must_pass:
            checker.fail(where, f"{description}" + (f" ({detail})" if detail else " (it passed)"))
        elif not must_pass and detail.startswith("timed out"):
            checker.fail(where, f"{description}, but by failing rather than timing out")

    # Summary
    icats = Counter(obj.get("category") for _, obj in interactions)
    ecats = Counter(obj.get("category") for _, obj in evals)
    kinds = Counter(feedback_kind(obj["feedback"]) for _, obj in good_interactions)
    users = Counter(obj.get("user") for _, obj in interactions)
    difficulty = Counter(obj.get("difficulty", "unspecified") for _, obj in evals)
    for label, counts, records in (("interactions", icats, interactions), ("eval", ecats, evals)):
        for cat in CATEGORIES:
            if records and counts[cat] < MIN_PER_CATEGORY[label]:
                checker.fail(label, f"category {cat!r} has {counts[cat]} records "
                                    f"(want at least {MIN_PER_CATEGORY[label]})")

    print(f"interactions: {len(interactions)} ({args.interactions})")
    print(f"eval problems: {len(evals)} ({args.eval})")
    print(f"{'category':<12} {'interactions':>12} {'eval':>5}")
    for cat in CATEGORIES:
        print(f"{cat:<12} {icats[cat]:>12} {ecats[cat]:>5}")
    total = sum(kinds.values()) or 1
    print("feedback kinds:")
    for kind in ("correct", "buggy_corrected", "buggy_uncorrected", "clumsy"):
        print(f"  {kind:<18} {kinds[kind]:>4}  ({100 * kinds[kind] / total:.0f}%)")
    print("users: " + ", ".join(f"{u}={n}" for u, n in sorted(users.items(), key=str)))
    print("eval difficulty: " + ", ".join(f"{d}={n}" for d, n in sorted(difficulty.items())))
    print(f"code runs: {len(jobs)}")

    if checker.problems:
        print(f"\n{len(checker.problems)} problem(s):", file=sys.stderr)
        for problem in checker.problems:
            print("  " + problem, file=sys.stderr)
        print("FAILED", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Validate the bundled Acme task corpus: selftrain/resources/tasks/acme_tasks.jsonl.

Checks:
- every line is a JSON object with exactly the fields task_id, convention, prompt, entry_point,
  reference, tests (non-empty strings), split ("train" or "heldout") and explicit (bool);
- task_ids look like "acme-NNN" and are unique; entry points are identifiers and unique;
- the convention is one of CONVENTIONS; the prompt names the entry point in backticks;
- the reference compiles, defines the entry point and has at most MAX_REFERENCE_LINES non-blank
  lines; reference and tests use no I/O, processes, randomness, clocks or eval/exec (FORBIDDEN);
- the tests hold MIN_ASSERTS..MAX_ASSERTS top-level asserts that call the entry point, and they
  *pin the convention*: at least one assert contains a comparison and a string literal matching
  the convention's marker (CONVENTIONS[name].marker, a regular expression searched in every
  string constant of the assert, f-string parts included). E.g. for record ids an assert such as
  `assert format_record_id(42) == 'ACM-000042'` or `assert parse_record_id('ACM-000042') == 42`.
  This keeps tests from checking only edge cases (empty input, types) that a model could pass
  without knowing the convention;
- at least MIN_TASKS tasks; the held-out share is within HELDOUT_SHARE overall; every convention
  has tasks in both splits; the explicit share is within EXPLICIT_SHARE;
- no held-out prompt is a near-duplicate of a train prompt: the token-Jaccard similarity of the
  normalised prompts (lower-cased, split into runs of [a-z0-9]) must stay below
  NEAR_DUPLICATE_JACCARD; and no held-out entry point is named (as a whole word) in any train
  task's prompt, reference or tests, so training on the train stream never shows a held-out
  function;
- every reference passes its tests: `python -c reference + "\\n" + tests` exits 0 within
  TIMEOUT_S seconds (run in parallel, --jobs). The corpus is our own trusted file.

Standard library only. Prints a summary and OK, exits 1 on any problem.

Usage: python scripts/check_task_corpus.py [--tasks PATH] [--jobs N] [--no-exec]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS_PATH = ROOT / "selftrain" / "resources" / "tasks" / "acme_tasks.jsonl"

MIN_TASKS = 300
HELDOUT_SHARE = (0.25, 0.35)
EXPLICIT_SHARE = (0.12, 0.30)
NEAR_DUPLICATE_JACCARD = 0.8
MIN_ASSERTS, MAX_ASSERTS = 3, 6
MAX_REFERENCE_LINES = 20
TIMEOUT_S = 10
SPLITS = ("train", "heldout")
FIELDS = {"task_id": str, "convention": str, "prompt": str, "entry_point": str,
          "reference": str, "tests": str, "split": str, "explicit": bool}
TASK_ID = re.compile(r"acme-\d{3,}")


@dataclass(frozen=True)
class Convention:
    summary: str
    marker: str  # regular expression; see the module docstring


CONVENTIONS = {
    "record_id": Convention("'ACM-' + record number zero-padded to 6 digits", r"ACM-\d{6}"),
    "money": Convention("integer cents shown as '1,234.50 EUR'", r"\d\.\d\d EUR"),
    "date": Convention("dates are 'YYYYMMDD' strings",
                       r"^(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$"),
    "log_line": Convention("log lines 'LEVEL|component|message', levels DEBUG/INFO/WARN/ERROR",
                           r"^(DEBUG|INFO|WARN|ERROR)\|[a-z0-9_]+\|"),
    "feature_flag": Convention("flags 'ff_' + snake_case, flag files 'ff_name=on|off'",
                               r"\bff_[a-z0-9]+(_[a-z0-9]+)*"),
    "error_code": Convention("'<C|H|M|L>-E' + 4 digits (severity prefix)", r"\b[CHML]-E\d{4}\b"),
    "config_key": Convention("dotted lower-case keys; env vars 'ACME_' + upper-case key",
                             r"^[a-z][a-z0-9]*(\.[a-z0-9]+)+\b|\bACME_[A-Z][A-Z0-9_]*"),
    "api_path": Convention("'/v2/{resource}s/{id}', multi-word resources kebab-case",
                           r"/v2/[a-z-]+s\b"),
    "sku": Convention("'SKU-' + 7 digits + '-' + mod-11 weighted check character ('X' for 10)",
                      r"SKU-\d{7}-[0-9X]|^X$"),
    "username": Convention("first initial + last name, letters only, lower-case, max 8 chars; "
                           "e-mail '<username>@acme.example'", r"^[a-z]{8}$|@acme\.example\b"),
    "rate": Convention("integer basis points shown as '12.50%'", r"-?\d+\.\d\d%"),
    "version": Convention("calendar versions 'vYYYY.MM.N'", r"\bv\d{4}\.\d{2}\.\d+\b"),
    "invoice": Convention("invoice numbers 'INV/YYYY/NNNNN'", r"INV/\d{4}/\d{5}"),
    "duration": Convention("minutes shown as '1h30m', '2h', '45m', '0m'",
                           r"\b\d+h\d+m\b|\b\d+h\b|\b\d+m\b"),
    "priority": Convention("priorities 'P0' (critical) .. 'P4' (trivial)", r"^P[0-4]$|\[P[0-4]\]"),
    "hostname": Convention("hosts '{service}-{prod|stg|dev}-{NN}.acme.internal'",
                           r"[a-z0-9]+-(prod|stg|dev)-\d\d\b"),
    "fiscal_quarter": Convention("fiscal year starts 1 April, named by its end year: 'FY24-Q1'",
                                 r"\bFY\d\d(-Q[1-4])?\b"),
    "file_size": Convention("bytes shown as '512 B' or '1.5 KiB' (binary units, one decimal)",
                            r"^\d+ B$|\d+\.\d (KiB|MiB|GiB|TiB)\b"),
}

# Code and tests must stay pure: no file system, network, processes, clocks or randomness.
FORBIDDEN = [
    (re.compile(r"\bopen\s*\("), "open()"),
    (re.compile(r"^\s*(import|from)\s+(os|sys|random|socket|subprocess|shutil|tempfile|pathlib|"
                r"requests|http|urllib|secrets|threading|multiprocessing|time|io)\b", re.M),
     "forbidden import"),
    (re.compile(r"\b__import__\s*\("), "__import__()"),
    (re.compile(r"\b(eval|exec|input|print)\s*\("), "eval()/exec()/input()/print()"),
    (re.compile(r"\b(date\.today|datetime\.now|datetime\.utcnow|datetime\.today)\s*\("), "clock"),
]


def load_tasks(path: Path = TASKS_PATH) -> tuple[list[dict], list[str]]:
    """(tasks, problems): every non-blank JSON-object line; parse problems are reported."""
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    tasks = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            problems.append(f"{path.name}:{n}: blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}:{n}: invalid JSON: {exc.msg}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path.name}:{n}: not a JSON object")
            continue
        tasks.append(obj)
    return tasks, problems


def _where(task: dict) -> str:
    return str(task.get("task_id", "?"))


def pins_convention(tests: str, convention: str) -> bool:
    """Whether some top-level assert has a comparison and a string literal matching the marker."""
    marker = re.compile(CONVENTIONS[convention].marker)
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return False
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            continue
        inner = list(ast.walk(node.test))
        if not any(isinstance(n, ast.Compare) for n in inner):
            continue
        if any(isinstance(n, ast.Constant) and isinstance(n.value, str) and marker.search(n.value)
               for n in inner):
            return True
    return False


def validate_task(task: dict) -> list[str]:
    """Problems with one task's fields and static content (no execution)."""
    where = _where(task)
    problems = []
    for key, kind in FIELDS.items():
        if key not in task:
            problems.append(f"{where}: missing field {key!r}")
        elif not isinstance(task[key], kind):
            problems.append(f"{where}: field {key!r} has type {type(task[key]).__name__}")
        elif kind is str and not task[key].strip():
            problems.append(f"{where}: field {key!r} is empty")
    for key in sorted(set(task) - set(FIELDS)):
        problems.append(f"{where}: unknown field {key!r}")
    if problems:
        return problems
    if not TASK_ID.fullmatch(task["task_id"]):
        problems.append(f"{where}: task_id should look like 'acme-001'")
    if task["convention"] not in CONVENTIONS:
        problems.append(f"{where}: unknown convention {task['convention']!r}")
    if task["split"] not in SPLITS:
        problems.append(f"{where}: split must be one of {SPLITS}, got {task['split']!r}")
    entry = task["entry_point"]
    if not entry.isidentifier():
        problems.append(f"{where}: entry_point {entry!r} is not an identifier")
    if f"`{entry}(" not in task["prompt"]:
        problems.append(f"{where}: prompt does not name `{entry}(...)` in backticks")
    reference, tests = task["reference"], task["tests"]
    for label, source in (("reference", reference), ("tests", tests)):
        for pattern, what in FORBIDDEN:
            if pattern.search(source):
                problems.append(f"{where}: {label} uses {what}")
    try:
        ref_tree = ast.parse(reference)
    except SyntaxError as exc:
        problems.append(f"{where}: reference does not compile: {exc}")
    else:
        if not any(isinstance(n, ast.FunctionDef) and n.name == entry for n in ref_tree.body):
            problems.append(f"{where}: reference does not define {entry}()")
    lines = [line for line in reference.splitlines() if line.strip()]
    if len(lines) > MAX_REFERENCE_LINES:
        problems.append(f"{where}: reference has {len(lines)} lines (max {MAX_REFERENCE_LINES})")
    try:
        test_tree = ast.parse(tests)
    except SyntaxError as exc:
        problems.append(f"{where}: tests do not compile: {exc}")
        return problems
    asserts = sum(isinstance(n, ast.Assert) for n in test_tree.body)
    if not MIN_ASSERTS <= asserts <= MAX_ASSERTS:
        problems.append(f"{where}: tests have {asserts} asserts (want {MIN_ASSERTS}-{MAX_ASSERTS})")
    if not re.search(rf"\b{re.escape(entry)}\s*\(", tests):
        problems.append(f"{where}: tests never call {entry}()")
    if task["convention"] in CONVENTIONS and not pins_convention(tests, task["convention"]):
        problems.append(f"{where}: no assert compares with a literal matching the "
                        f"{task['convention']} marker {CONVENTIONS[task['convention']].marker!r}")
    return problems


def check_uniqueness(tasks: list[dict]) -> list[str]:
    problems = []
    for key in ("task_id", "entry_point"):
        seen: dict = {}
        for task in tasks:
            value = task.get(key)
            if value in seen:
                problems.append(f"{_where(task)}: duplicate {key} {value!r} (first in {seen[value]})")
            seen.setdefault(value, _where(task))
    return problems


def split_counts(tasks: list[dict]) -> dict[str, Counter]:
    """{convention: Counter(split -> n)}"""
    counts: dict[str, Counter] = {}
    for task in tasks:
        counts.setdefault(task.get("convention"), Counter())[task.get("split")] += 1
    return counts


def check_splits(tasks: list[dict]) -> list[str]:
    problems = []
    if len(tasks) < MIN_TASKS:
        problems.append(f"corpus: {len(tasks)} tasks (want at least {MIN_TASKS})")
    if not tasks:
        return problems
    held = sum(task.get("split") == "heldout" for task in tasks)
    share = held / len(tasks)
    if not HELDOUT_SHARE[0] <= share <= HELDOUT_SHARE[1]:
        problems.append(f"corpus: held-out share {share:.2f} outside {HELDOUT_SHARE}")
    explicit = sum(task.get("explicit") is True for task in tasks) / len(tasks)
    if not EXPLICIT_SHARE[0] <= explicit <= EXPLICIT_SHARE[1]:
        problems.append(f"corpus: explicit share {explicit:.2f} outside {EXPLICIT_SHARE}")
    counts = split_counts(tasks)
    for name in CONVENTIONS:
        for split in SPLITS:
            if counts.get(name, Counter())[split] == 0:
                problems.append(f"convention {name!r}: no {split} tasks")
    return problems


def prompt_tokens(prompt: str) -> frozenset[str]:
    """A prompt normalised for the near-duplicate check: lower-cased runs of [a-z0-9]."""
    return frozenset(re.findall(r"[a-z0-9]+", prompt.lower()))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(tasks: list[dict], threshold: float = NEAR_DUPLICATE_JACCARD
                    ) -> list[tuple[str, str, float]]:
    """(heldout task_id, train task_id, similarity) for every cross-split pair at or above
    threshold, or sharing an entry point."""
    train = [(t["task_id"], t["entry_point"], prompt_tokens(t["prompt"]))
             for t in tasks if t.get("split") == "train"]
    pairs = []
    for task in tasks:
        if task.get("split") != "heldout":
            continue
        tokens = prompt_tokens(task["prompt"])
        for tid, entry, other in train:
            score = jaccard(tokens, other)
            if score >= threshold or entry == task["entry_point"]:
                pairs.append((task["task_id"], tid, score))
    return pairs


def entry_point_leaks(tasks: list[dict]) -> list[tuple[str, str]]:
    """(heldout task_id, train task_id) where the held-out entry point is named in the train task."""
    train = [t for t in tasks if t.get("split") == "train"]
    leaks = []
    for task in tasks:
        if task.get("split") != "heldout":
            continue
        name = re.compile(rf"\b{re.escape(task['entry_point'])}\b")
        for other in train:
            if any(name.search(other[key]) for key in ("prompt", "reference", "tests")):
                leaks.append((task["task_id"], other["task_id"]))
    return leaks


def max_cross_split_similarity(tasks: list[dict]) -> float:
    return max((score for *_, score in near_duplicates(tasks, threshold=0.0)), default=0.0)


def run_reference(task: dict) -> tuple[bool, str]:
    """(passed, detail) for the task's reference followed by its tests, in a fresh interpreter."""
    source = task["reference"] + "\n" + task["tests"]
    try:
        proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT_S}s"
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


def run_references(tasks: list[dict], jobs: int | None = None) -> list[str]:
    """Problems for every task whose reference fails its tests."""
    jobs = jobs or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(run_reference, tasks))
    return [f"{_where(task)}: reference fails its tests ({detail})"
            for task, (passed, detail) in zip(tasks, results) if not passed]


def check_corpus(tasks: list[dict], *, execute: bool = True, jobs: int | None = None) -> list[str]:
    """Every problem with the corpus (static checks, splits, near-duplicates, execution)."""
    problems = []
    valid = []
    for task in tasks:
        found = validate_task(task)
        problems += found
        if not found:
            valid.append(task)
    problems += check_uniqueness(tasks)
    problems += check_splits(tasks)
    for held, train, score in near_duplicates(valid):
        problems.append(f"{held}: held-out prompt is a near-duplicate of train task {train} "
                        f"(Jaccard {score:.2f})")
    for held, train in entry_point_leaks(valid):
        problems.append(f"{held}: held-out entry point is named in train task {train}")
    if execute:
        problems += run_references(valid, jobs)
    return problems


def summary(tasks: list[dict]) -> str:
    counts = split_counts(tasks)
    explicit = Counter(t.get("convention") for t in tasks if t.get("explicit") is True)
    lines = [f"{'convention':<16} {'train':>5} {'heldout':>7} {'total':>5} {'explicit':>8}"]
    for name in CONVENTIONS:
        c = counts.get(name, Counter())
        lines.append(f"{name:<16} {c['train']:>5} {c['heldout']:>7} "
                     f"{c['train'] + c['heldout']:>5} {explicit[name]:>8}")
    train = sum(t.get("split") == "train" for t in tasks)
    held = sum(t.get("split") == "heldout" for t in tasks)
    n_explicit = sum(explicit.values())
    lines.append(f"{'total':<16} {train:>5} {held:>7} {len(tasks):>5} {n_explicit:>8}")
    if tasks:
        held_explicit = sum(t.get("explicit") is True and t.get("split") == "heldout" for t in tasks)
        lines.append(f"conventions: {len(counts)}; held-out share {held / len(tasks):.2f}; "
                     f"explicit prompts {n_explicit} ({100 * n_explicit / len(tasks):.0f}%), "
                     f"{held_explicit} of them held out")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, default=TASKS_PATH)
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: CPU count)")
    parser.add_argument("--no-exec", action="store_true", help="skip running the references")
    args = parser.parse_args(argv)

    tasks, problems = load_tasks(args.tasks)
    problems += check_corpus(tasks, execute=not args.no_exec, jobs=args.jobs)
    print(f"tasks: {len(tasks)} ({args.tasks})")
    print(summary(tasks))
    valid = [t for t in tasks if not validate_task(t)]
    print(f"max cross-split prompt similarity (token Jaccard): "
          f"{max_cross_split_similarity(valid):.2f} (limit < {NEAR_DUPLICATE_JACCARD})")
    if not args.no_exec:
        print(f"reference runs: {len(valid)}")
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        print("FAILED", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

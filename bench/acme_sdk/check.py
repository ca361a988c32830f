"""Checks tasks.jsonl (the acme in-house library corpus, bench/acme_sdk.py) against acme.py.

Usage: python check.py [--no-exec]

(a) static rules: key set, ids, entry points, splits, helpers, prompts, tests,
    helper coverage, Jaccard rule, entry-point rule, convention markers;
(b) runs every reference + tests in a fresh `python -I` subprocess (cwd = this folder);
(c) runs every reference with its acme import removed and requires a NameError;
(d) prints a per-convention table and OK, or the failures.
"""

import ast
import collections
import concurrent.futures
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True

ROOT = Path(__file__).resolve().parent
TASKS = ROOT / "tasks.jsonl"
LIBRARY = ROOT / "acme.py"

KEYS = {"task_id", "convention", "prompt", "entry_point", "reference", "tests", "split", "helpers"}
CONVENTIONS = ["record_id", "money", "date", "log_line", "error_code",
               "api_path", "version", "invoice", "duration", "priority"]
TRAIN_RANGE = (8, 10)      # train tasks per convention
HELDOUT_RANGE = (3, 5)     # held-out tasks per convention
MIN_TRAIN_USES = 3         # a helper used by a held-out reference needs this many train uses
JACCARD_LIMIT = 0.7
BODY_LINES = (1, 8)
ASSERTS = (3, 5)
STDLIB_OK = {"datetime", "re", "calendar", "collections", "itertools", "functools", "math"}

_DATE = r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_DURATION = r"(?<![\w.])\d+(?:h\d+m|h|m)(?![\w])"
# Convention markers, searched in the string literals of the tests (whole=True: the whole literal).
MARKERS = {
    "record_id": (r"ACM-\d{6}", False),
    "money": (r"\d\.\d{2} EUR", False),
    "date": (_DATE, True),
    "log_line": (r"^(?:DEBUG|INFO|WARN|ERROR)\|[a-z0-9_]+\|", False),
    "error_code": (r"[CHML]-E\d{4}", False),
    "api_path": (r"/v2/[a-z0-9]+(?:-[a-z0-9]+)*s\b", False),
    "version": (r"v\d{4}\.\d{2}\.\d+", False),
    "invoice": (r"INV/\d{4}/\d{5}|INV-\d{4}-\d{5}\.pdf", False),
    "duration": (_DURATION, False),
    "priority": (r"^P[0-4]$|\[P[0-4]\]", False),
}
# The same formats searched in prompts, which must not show them (no format examples).
PROMPT_MARKERS = {
    "record_id": r"ACM-\d",
    "money": r"\d\.\d{2} ?EUR|\bEUR\b",
    "date": r"\b" + _DATE + r"\b",
    "log_line": r"(?:DEBUG|INFO|WARN|ERROR)\|",
    "error_code": r"\b[CHML]-E\d",
    "api_path": r"/v2/|api\.acme\.example",
    "version": r"\bv\d{4}\.",
    "invoice": r"INV[/-]\d",
    "duration": _DURATION,
    "priority": r"\bP[0-4]\b",
}

WRAPPER = (
    "import sys; sys.path.insert(0, {root!r}); f = sys.argv[1]; "
    "exec(compile(open(f).read(), f, 'exec'), {{'__name__': '__main__'}})"
)


def tokens(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


def load_library():
    spec = importlib.util.spec_from_file_location("acme_under_check", LIBRARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_library(errors):
    source = LIBRARY.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        for name in names:
            if name not in sys.stdlib_module_names:
                errors.append(f"acme.py: non-stdlib import {name}")
    module = load_library()
    helpers = list(module.__all__)
    if not ast.get_docstring(tree):
        errors.append("acme.py: no module docstring")
    for name in helpers:
        obj = getattr(module, name, None)
        if not callable(obj):
            errors.append(f"acme.py: __all__ names {name}, which is not a function")
        elif not (obj.__doc__ or "").strip():
            errors.append(f"acme.py: {name} has no docstring")
    return module, helpers


def string_literals(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def has_marker(convention, tests_tree):
    pattern, whole = MARKERS[convention]
    for stmt in tests_tree.body:
        if not isinstance(stmt, ast.Assert):
            continue
        if not any(isinstance(n, ast.Compare) for n in ast.walk(stmt)):
            continue
        for literal in string_literals(stmt):
            if (re.fullmatch(pattern, literal) if whole else re.search(pattern, literal)):
                return True
    return False


def check_task(row, helpers, errors):
    tid = row.get("task_id", "?")
    where = f"{tid}"
    if set(row) != KEYS:
        errors.append(f"{where}: keys {sorted(row)} != {sorted(KEYS)}")
        return None
    conv, ep, prompt, ref, tests = (row["convention"], row["entry_point"], row["prompt"],
                                    row["reference"], row["tests"])
    if conv not in CONVENTIONS:
        errors.append(f"{where}: unknown convention {conv!r}")
    if row["split"] not in ("train", "heldout"):
        errors.append(f"{where}: split {row['split']!r}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", ep):
        errors.append(f"{where}: bad entry point {ep!r}")
    if ep in helpers:
        errors.append(f"{where}: entry point {ep} shadows an acme helper")

    # prompt
    if not prompt.startswith(f"Write `{ep}("):
        errors.append(f"{where}: prompt does not start with 'Write `{ep}(...'")
    if "acme." in prompt.lower().replace("api.acme.example", "") or "`acme`" in prompt:
        errors.append(f"{where}: prompt mentions the acme module")
    for name in helpers:
        if re.search(rf"\b{re.escape(name)}\b", prompt):
            errors.append(f"{where}: prompt names acme helper {name}")
    for c, pattern in PROMPT_MARKERS.items():
        if re.search(pattern, prompt):
            errors.append(f"{where}: prompt shows the {c} format ({pattern})")
    if "acme" not in prompt.lower():
        errors.append(f"{where}: prompt does not speak of an Acme convention")

    # reference
    try:
        ref_tree = ast.parse(ref)
    except SyntaxError as exc:
        errors.append(f"{where}: reference does not parse: {exc}")
        return None
    imported = []
    defs = []
    for stmt in ref_tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "acme":
            imported += [a.name for a in stmt.names]
            if any(a.asname for a in stmt.names):
                errors.append(f"{where}: aliased acme import")
        elif isinstance(stmt, ast.ImportFrom) or isinstance(stmt, ast.Import):
            mods = [stmt.module] if isinstance(stmt, ast.ImportFrom) else [a.name for a in stmt.names]
            for m in mods:
                if m.split(".")[0] not in STDLIB_OK:
                    errors.append(f"{where}: reference imports {m}")
        elif isinstance(stmt, ast.FunctionDef):
            defs.append(stmt)
        else:
            errors.append(f"{where}: unexpected top-level statement in reference: {type(stmt).__name__}")
    if not imported:
        errors.append(f"{where}: reference does not import from acme")
    if len(defs) != 1 or defs[0].name != ep:
        errors.append(f"{where}: reference must define exactly `{ep}`")
        return None
    fn = defs[0]
    body_lines = fn.end_lineno - fn.body[0].lineno + 1
    if not BODY_LINES[0] <= body_lines <= BODY_LINES[1]:
        errors.append(f"{where}: body has {body_lines} lines")
    if row["helpers"] != imported:
        errors.append(f"{where}: helpers {row['helpers']} != imported {imported}")
    used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    for name in imported:
        if name not in helpers:
            errors.append(f"{where}: imports {name}, which acme does not export")
        if name not in used:
            errors.append(f"{where}: imports {name} but does not use it")
    for name in helpers:
        if name in used and name not in imported:
            errors.append(f"{where}: uses {name} without importing it")

    # tests
    try:
        tests_tree = ast.parse(tests)
    except SyntaxError as exc:
        errors.append(f"{where}: tests do not parse: {exc}")
        return None
    n_asserts = 0
    for stmt in tests_tree.body:
        if isinstance(stmt, ast.Assert):
            n_asserts += 1
        elif not (isinstance(stmt, ast.Import) and all(a.name in STDLIB_OK for a in stmt.names)):
            errors.append(f"{where}: tests contain a {type(stmt).__name__} statement")
    if not ASSERTS[0] <= n_asserts <= ASSERTS[1]:
        errors.append(f"{where}: {n_asserts} asserts")
    test_names = {n.id for n in ast.walk(tests_tree) if isinstance(n, ast.Name)}
    if ep not in test_names:
        errors.append(f"{where}: tests do not call {ep}")
    for name in helpers:
        if name in test_names:
            errors.append(f"{where}: tests use acme helper {name}")
    if conv in MARKERS and not has_marker(conv, tests_tree):
        errors.append(f"{where}: no assert pins the {conv} format")
    return imported


def run_file(code, tmpdir, name):
    path = Path(tmpdir) / f"{name}.py"
    path.write_text(code)
    cmd = [sys.executable, "-I", "-B", "-c", WRAPPER.format(root=str(ROOT)), str(path)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return proc.returncode, proc.stderr


def strip_acme_import(reference):
    return "\n".join(line for line in reference.splitlines() if not line.startswith("from acme import"))


def execute(rows, errors):
    jobs = {}
    with tempfile.TemporaryDirectory() as tmpdir, concurrent.futures.ThreadPoolExecutor(4) as pool:
        for row in rows:
            tid = row["task_id"]
            jobs[pool.submit(run_file, row["reference"] + "\n" + row["tests"] + "\n", tmpdir, tid)] = (row, "with")
            jobs[pool.submit(run_file, strip_acme_import(row["reference"]) + "\n" + row["tests"] + "\n",
                             tmpdir, tid + "_noacme")] = (row, "without")
        passed = broken = 0
        for future in concurrent.futures.as_completed(jobs):
            row, kind = jobs[future]
            rc, stderr = future.result()
            last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            if kind == "with":
                if rc == 0:
                    passed += 1
                else:
                    errors.append(f"{row['task_id']}: reference fails its tests: {last}")
            else:
                names = "|".join(map(re.escape, row["helpers"])) or "$^"
                if rc != 0 and re.search(rf"NameError: name '({names})' is not defined", stderr):
                    broken += 1
                else:
                    errors.append(f"{row['task_id']}: without the acme import the tests do not fail "
                                  f"with a NameError on a helper (rc={rc}, {last!r})")
    return passed, broken


def main():
    errors = []
    _, helpers = check_library(errors)
    rows = []
    for n, line in enumerate(TASKS.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"line {n}: not JSON: {exc}")

    imports = {}
    for row in rows:
        imported = check_task(row, helpers, errors)
        if imported is not None:
            imports[row.get("task_id")] = imported
    rows = [r for r in rows if set(r) == KEYS]

    # ids and entry points
    ids = [r["task_id"] for r in rows]
    if ids != [f"sdk-{i:03d}" for i in range(1, len(rows) + 1)]:
        errors.append("task ids are not sdk-001 .. sdk-NNN in order")
    for ep, n in collections.Counter(r["entry_point"] for r in rows).items():
        if n > 1:
            errors.append(f"entry point {ep} used {n} times")

    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] == "heldout"]

    # split counts
    counts = collections.Counter((r["convention"], r["split"]) for r in rows)
    for conv in CONVENTIONS:
        t, h = counts[(conv, "train")], counts[(conv, "heldout")]
        if not TRAIN_RANGE[0] <= t <= TRAIN_RANGE[1]:
            errors.append(f"{conv}: {t} train tasks")
        if not HELDOUT_RANGE[0] <= h <= HELDOUT_RANGE[1]:
            errors.append(f"{conv}: {h} held-out tasks")

    # helper coverage
    train_uses = collections.Counter(h for r in train for h in set(r["helpers"]))
    heldout_uses = collections.Counter(h for r in heldout for h in set(r["helpers"]))
    for r in heldout:
        for h in r["helpers"]:
            if train_uses[h] < MIN_TRAIN_USES:
                errors.append(f"{r['task_id']}: helper {h} is used by only {train_uses[h]} train references")
    unused = [h for h in helpers if train_uses[h] + heldout_uses[h] == 0]
    if unused:
        errors.append(f"acme helpers used by no task: {unused}")

    # Jaccard rule
    train_tokens = [(r["task_id"], tokens(r["prompt"])) for r in train]
    max_j, max_pair = 0.0, None
    for r in heldout:
        ht = tokens(r["prompt"])
        for tid, tt in train_tokens:
            j = jaccard(ht, tt)
            if j > max_j:
                max_j, max_pair = j, (r["task_id"], tid)
            if j >= JACCARD_LIMIT:
                errors.append(f"{r['task_id']}: prompt Jaccard {j:.2f} with train {tid}")

    # entry-point rule
    for r in heldout:
        pattern = re.compile(rf"\b{re.escape(r['entry_point'])}\b")
        for t in train:
            for field in ("prompt", "reference", "tests"):
                if pattern.search(t[field]):
                    errors.append(f"{r['task_id']}: held-out entry point {r['entry_point']} "
                                  f"appears in train {t['task_id']} {field}")

    # execution
    passed = broken = None
    if "--no-exec" not in sys.argv:
        passed, broken = execute(rows, errors)

    # report
    print(f"{'convention':<12} {'train':>5} {'heldout':>7} {'total':>5}  helpers")
    for conv in CONVENTIONS:
        conv_helpers = sorted({h for r in rows if r["convention"] == conv for h in r["helpers"]})
        t, h = counts[(conv, "train")], counts[(conv, "heldout")]
        print(f"{conv:<12} {t:>5} {h:>7} {t + h:>5}  {', '.join(conv_helpers)}")
    print(f"{'total':<12} {len(train):>5} {len(heldout):>7} {len(rows):>5}")
    print()
    print("helper uses (train/heldout): " + ", ".join(
        f"{h} {train_uses[h]}/{heldout_uses[h]}" for h in helpers))
    print(f"acme helpers: {len(helpers)}; max held-out/train prompt Jaccard: {max_j:.3f} {max_pair}")
    if passed is not None:
        print(f"references passing their tests: {passed}/{len(rows)}; "
              f"failing with NameError without the acme import: {broken}/{len(rows)}")
    else:
        print("execution skipped (--no-exec)")
    if errors:
        print(f"\nFAILED: {len(errors)} problem(s)")
        for e in errors:
            print("  " + e)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()

"""Evaluation suites: problems with hidden tests that a model's answer must pass.

A suite is a JSONL file, one problem per line:
  {"task_id": str, "prompt": str, "entry_point": str, "tests": str, "reference"?: str, "category"?: str}
`demo` names the suite bundled with selftrain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from selftrain.errors import SelftrainError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED = {"demo": RESOURCES / "demo_eval.jsonl"}


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    tests: str
    reference: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    problems: tuple[Problem, ...]
    digest: str  # sha256 of the file, so stored results can be matched to the exact items


def load_suite(name: str, limit: int = 0) -> Suite:
    path = BUNDLED.get(name, Path(name))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SelftrainError(f"Could not read the evaluation suite {name!r} ({path}): {exc.strerror}.") from None
    problems, seen = [], set()
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SelftrainError(f"{where}: not valid JSON ({exc.msg}).") from None
        if not isinstance(obj, dict):
            raise SelftrainError(f"{where}: expected a JSON object.")
        for key in ("task_id", "prompt", "entry_point", "tests"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise SelftrainError(f"{where} (item {obj.get('task_id', '?')}): field '{key}' "
                                     "must be a non-empty string.")
        if obj["task_id"] in seen:
            raise SelftrainError(f"{where}: task_id {obj['task_id']!r} appears twice.")
        seen.add(obj["task_id"])
        problems.append(Problem(obj["task_id"], obj["prompt"], obj["entry_point"], obj["tests"],
                                obj.get("reference"), obj.get("category")))
    if not problems:
        raise SelftrainError(f"The evaluation suite {path} has no problems.")
    if limit:
        problems = problems[:limit]
    return Suite(name=name, problems=tuple(problems), digest=hashlib.sha256(raw).hexdigest())

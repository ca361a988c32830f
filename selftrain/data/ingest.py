"""Read interactions (with feedback and tests) from a JSONL file, validating every line.

One object per line:
  {"prompt": str, "response": {"code": str, "explanation": str},
   "id"?: str, "user"?: str, "category"?: str, "entry_point"?: str, "tests"?: str,
   "feedback"?: {"rating"?: 1-5, "accepted"?: bool, "corrected_code"?: str, "comment"?: str}}
A malformed line names the file and line; the whole file is rejected (nothing is stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from selftrain.errors import SelftrainError


@dataclass(frozen=True)
class IngestRecord:
    external_id: str | None
    user: str
    category: str | None
    prompt: str
    code: str
    explanation: str
    entry_point: str | None
    tests: str | None
    feedback: dict | None


def _typed(obj: dict, key: str, kind, where: str, required: bool = False):
    value = obj.get(key)
    if value is None:
        if required:
            raise SelftrainError(f"{where}: field '{key}' is missing.")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", dict: "an object", bool: "true or false", int: "an integer"}
        raise SelftrainError(f"{where}: field '{key}' must be {names[kind]}, got {value!r:.60}.")
    return value


def parse_line(line: str, where: str) -> IngestRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SelftrainError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(obj, dict):
        raise SelftrainError(f"{where}: expected a JSON object.")
    response = _typed(obj, "response", dict, where) or {}
    code = _typed(response, "code", str, where + " response") or _typed(obj, "code", str, where) or ""
    explanation = (_typed(response, "explanation", str, where + " response")
                   or _typed(obj, "explanation", str, where) or "")
    feedback = _typed(obj, "feedback", dict, where)
    if feedback is not None:
        rating = _typed(feedback, "rating", int, where + " feedback")
        if rating is not None and not 1 <= rating <= 5:
            raise SelftrainError(f"{where}: feedback 'rating' must be from 1 to 5, got {rating}.")
        _typed(feedback, "accepted", bool, where + " feedback")
        _typed(feedback, "corrected_code", str, where + " feedback")
        _typed(feedback, "comment", str, where + " feedback")
    external_id = obj.get("id")
    return IngestRecord(
        external_id=str(external_id) if external_id is not None else None,
        user=_typed(obj, "user", str, where) or "imported",
        category=_typed(obj, "category", str, where),
        prompt=_typed(obj, "prompt", str, where, required=True),
        code=code, explanation=explanation,
        entry_point=_typed(obj, "entry_point", str, where),
        tests=_typed(obj, "tests", str, where),
        feedback=feedback)


def read_interactions(path: Path) -> list[IngestRecord]:
    """Every record in the file, or a SelftrainError naming the first bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SelftrainError(f"Could not read {path}: {exc}.") from None
    records = [parse_line(line, f"{path}, line {n}")
               for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise SelftrainError(f"{path} holds no interactions.")
    return records

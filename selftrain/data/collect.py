"""Collect: training candidates from interactions and their feedback, preference pairs
from what users rejected, and examples from external datasets (JSONL, CSV, or a Hugging
Face dataset saved with `save_to_disk`) through a field mapping.

What a user endorsed is what the model learns: their corrected code first, else an
answer they accepted or rated 4-5. Rejected and badly rated answers never become SFT
targets; they become the rejected side of preference pairs.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from selftrain.data.example import Candidate, Drop, normalize
from selftrain.errors import SelftrainError

FIELDS = ("prompt", "code", "explanation", "category", "entry_point", "tests")
REQUIRED = ("prompt", "code")


def choose_target(interaction, feedback) -> tuple[str, str, str] | str:
    """(code, explanation, target kind) the model should learn from, or the reason for none."""
    if feedback.corrected_code and feedback.corrected_code.strip():
        # The original explanation described the wrong code; do not pair it with the fix.
        return feedback.corrected_code, "", "corrected"
    if feedback.accepted is False:
        return "rejected"
    if feedback.rating is not None and feedback.rating <= 2:
        return "low rating"
    if feedback.accepted:
        return interaction.code, interaction.explanation, "accepted"
    if feedback.rating is not None and feedback.rating >= 4:
        return interaction.code, interaction.explanation, "rated"
    return "no endorsement"


def candidates_from_interactions(items) -> tuple[list[Candidate], list[Drop]]:
    """`items` are (interaction, feedback summary) pairs, as `store.records` gives them."""
    kept, drops = [], []
    for interaction, feedback in items:
        ref = f"interaction:{interaction.id}"
        choice = choose_target(interaction, feedback)
        if isinstance(choice, str):
            drops.append(Drop(ref, "collect", choice))
            continue
        code, explanation, target = choice
        kept.append(Candidate(ref=ref, prompt=interaction.prompt, code=code, explanation=explanation or "",
                              category=getattr(interaction, "category", None), target=target,
                              source="interaction", interaction_id=interaction.id,
                              entry_point=getattr(interaction, "entry_point", None),
                              tests=getattr(interaction, "tests", None)))
    return kept, drops


@dataclass(frozen=True)
class PreferenceCandidate:
    """A chosen and a rejected answer to one prompt, for reward models and DPO."""

    prompt: str
    chosen: str
    rejected: str
    source: str  # "correction" (the user's fix) | "accepted" (another answer to the same prompt)
    interaction_id: int | None = None


def preference_pairs(items) -> list[PreferenceCandidate]:
    """Pairs whose rejected side is an answer the user rejected or rated 1-2.

    The chosen side is the user's correction of it, else every answer to the same
    normalised prompt that was accepted or rated 4-5 (or corrected). Pure: the RLHF
    recipe decides what to store or train on.
    """
    endorsed: dict[str, list[str]] = defaultdict(list)
    bad = []
    for interaction, feedback in items:
        choice = choose_target(interaction, feedback)
        key = normalize(interaction.prompt)
        if not isinstance(choice, str):
            endorsed[key].append(choice[0])
        rejected = feedback.accepted is False or (feedback.rating is not None and feedback.rating <= 2)
        if rejected and interaction.code.strip():
            bad.append((interaction, feedback, key))
    pairs, seen = [], set()
    for interaction, feedback, key in bad:
        fix = feedback.corrected_code if feedback.corrected_code and feedback.corrected_code.strip() else None
        chosen = [(fix, "correction")] if fix else [(c, "accepted") for c in endorsed.get(key, [])]
        for code, source in chosen:
            if normalize(code) == normalize(interaction.code) or (key, code, interaction.code) in seen:
                continue
            seen.add((key, code, interaction.code))
            pairs.append(PreferenceCandidate(interaction.prompt, code, interaction.code, source, interaction.id))
    return pairs


# --- external datasets ------------------------------------------------------------------

@dataclass
class ExternalData:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one sentence per skipped row, with file and line
    rows: int = 0


def parse_mapping(text: str | None) -> dict[str, str]:
    """"prompt=question,code=solution" → {"prompt": "question", "code": "solution"}."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        ours, sep, theirs = part.partition("=")
        if not sep or ours.strip() not in FIELDS or not theirs.strip():
            raise SelftrainError(f"Field mapping {part!r} must look like FIELD=COLUMN with FIELD one of "
                                 f"{', '.join(FIELDS)}.")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def _lookup(row: dict, column: str):
    value = row
    for key in column.split("."):  # "response.code" reaches into nested objects
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _candidate(row, mapping: dict[str, str], ref: str, where: str) -> Candidate:
    if not isinstance(row, dict):
        raise SelftrainError(f"{where}: expected a JSON object.")
    values = {}
    for name in FIELDS:
        column = mapping.get(name, name)
        value = _lookup(row, column)
        if value is None and name == "code" and "code" not in mapping:
            value = _lookup(row, "response.code")  # the interaction format `selftrain ingest` reads
        if value is None and name == "explanation" and "explanation" not in mapping:
            value = _lookup(row, "response.explanation")
        if name in REQUIRED and (not isinstance(value, str) or not value.strip()):
            shown = "missing" if value is None else f"got {value!r:.40}"
            raise SelftrainError(f"{where}: field '{name}' (column '{column}') must be a non-empty string, {shown}.")
        if value is not None and not isinstance(value, str):
            raise SelftrainError(f"{where}: field '{name}' (column '{column}') must be a string, got {value!r:.40}.")
        values[name] = value
    return Candidate(ref=ref, prompt=values["prompt"], code=values["code"], explanation=values["explanation"] or "",
                     category=values["category"], target="external", source="external",
                     entry_point=values["entry_point"], tests=values["tests"])


def _rows(path: Path):
    """(line or row number, row or None, error) for each record in the file."""
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise SelftrainError(f"{path} is a folder; reading a saved Hugging Face dataset needs the "
                                 "'datasets' package.") from None
        try:
            data = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise SelftrainError(f"{path} is not a Hugging Face dataset saved with save_to_disk: {exc}.") from None
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise SelftrainError(f"{path} holds splits {', '.join(data)}; a 'train' split is needed.")
            data = data["train"]
        for i, row in enumerate(data, start=1):
            yield i, row, None
        return
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            start = 2  # a quoted field may span lines: report the line a record starts on
            for row in reader:
                yield start, {k: v for k, v in row.items() if k is not None and v != ""}, None
                start = reader.line_num + 1
        return
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield n, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def read_external(path: Path | str, mapping: dict[str, str] | None = None, *, strict: bool = False) -> ExternalData:
    """Examples from an external dataset. A malformed row is reported with file and line:
    skipped and counted, or, with `strict`, the whole file is refused."""
    path = Path(path)
    mapping = mapping or {}
    out = ExternalData()
    if not path.exists():
        raise SelftrainError(f"Could not read {path}: no such file or folder.")
    noun = "row" if path.is_dir() else "line"
    try:
        for n, row, error in _rows(path):
            out.rows += 1
            where = f"{path}, {noun} {n}"
            try:
                if error:
                    raise SelftrainError(f"{where}: {error}.")
                out.candidates.append(_candidate(row, mapping, f"{path.name}:{n}", where))
            except SelftrainError as exc:
                if strict:
                    raise
                out.errors.append(str(exc))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SelftrainError(f"Could not read {path}: {exc}.") from None
    if out.rows == 0:
        raise SelftrainError(f"{path} holds no examples.")
    return out

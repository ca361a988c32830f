"""Turn stored interactions and their feedback into training examples, explaining every drop.

What a user endorsed is what the model learns: their corrected code first, else an
answer they accepted or rated 4-5. Rejected and badly rated answers never become SFT
targets (they are preference-pair material for RLHF instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selftrain.models.prompting import INSTRUCTION_EXPLANATION, INSTRUCTION_PROMPT, is_valid_python

MIN_CHARS, MAX_CHARS = 50, 2048  # spec: length filter on the formatted example


@dataclass(frozen=True)
class Example:
    interaction_id: int | None
    prompt: str
    code: str
    explanation: str
    category: str
    target: str  # "corrected" | "accepted" | "rated"


@dataclass
class Curation:
    """The examples kept, and how many left at each stage and why."""

    examples: list[Example]
    n_input: int
    dropped: Counter = field(default_factory=Counter)

    def stats(self) -> dict:
        return {"input": self.n_input, "kept": len(self.examples), "dropped": dict(self.dropped),
                "targets": dict(Counter(e.target for e in self.examples)),
                "categories": dict(Counter(e.category for e in self.examples))}


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


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


def formatted_length(prompt: str, code: str, explanation: str) -> int:
    """Characters of the example in the spec's instruction layout (what its filter measures)."""
    text = INSTRUCTION_PROMPT.format(instruction=prompt.strip()) + code
    return len(text + (INSTRUCTION_EXPLANATION + explanation if explanation else ""))


def curate_interactions(items, *, exclude_prompts: set[str] = frozenset(),
                        exclude_entry_points: set[str] = frozenset()) -> Curation:
    """`items` are (interaction, feedback summary) pairs; nothing here touches a database.

    `exclude_*` hold the evaluation suite's normalised prompts and function names: an
    item the model will be judged on must never be trained on.
    """
    result = Curation(examples=[], n_input=len(items))
    seen: set[tuple[str, str]] = set()
    for interaction, feedback in items:
        choice = choose_target(interaction, feedback)
        if isinstance(choice, str):
            result.dropped[choice] += 1
            continue
        code, explanation, target = choice
        prompt = interaction.prompt
        if not is_valid_python(code):
            result.dropped["syntax error"] += 1
        elif not MIN_CHARS <= formatted_length(prompt, code, explanation) <= MAX_CHARS:
            result.dropped["length"] += 1
        elif normalize(prompt) in exclude_prompts or (
                interaction.entry_point and interaction.entry_point in exclude_entry_points):
            result.dropped["overlaps evaluation suite"] += 1
        elif (key := (normalize(prompt), normalize(code))) in seen:
            result.dropped["duplicate"] += 1
        else:
            seen.add(key)
            result.examples.append(Example(interaction.id, prompt, code, explanation,
                                           interaction.category or "uncategorized", target))
    return result


def write_snapshot(examples: list[Example], directory: Path) -> tuple[str, Path]:
    """Write examples as JSONL named by the SHA-256 of its content; return (hash, path).

    The same examples always give the same snapshot id, so a retried cycle reuses it.
    """
    lines = [json.dumps(asdict(e), sort_keys=True, ensure_ascii=False) for e in examples]
    content = ("\n".join(lines) + "\n").encode()
    digest = hashlib.sha256(content).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    return digest, path


def read_snapshot(path: Path) -> list[Example]:
    with open(path, encoding="utf-8") as fh:
        return [Example(**json.loads(line)) for line in fh if line.strip()]

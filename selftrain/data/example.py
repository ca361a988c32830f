"""The records that flow through curation: a `Candidate` while stages work on it, an
`Example` once it is kept, and a `Drop` for every one that is not.

Snapshots store `Example`s; fields added after the first release carry defaults so older
snapshot files still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from selftrain.models.prompting import INSTRUCTION_EXPLANATION, INSTRUCTION_PROMPT

MIN_CHARS, MAX_CHARS = 50, 2048  # spec: length filter on the formatted example


@dataclass(frozen=True)
class Example:
    """One training example. `sft.py` reads prompt, code and explanation."""

    interaction_id: int | None
    prompt: str
    code: str
    explanation: str
    category: str
    target: str  # "corrected" | "accepted" | "rated" | "external" | "synthetic"
    source: str = "interaction"  # interaction | external | synthetic
    ref: str = ""                # where it came from: "interaction:12", "file.jsonl:3", "interaction:12~rename"
    origin: str = ""             # for a synthetic example, the ref of the example it was mutated from
    mutation: str = ""           # for a synthetic example, which mutation made it
    quality: float | None = None  # the weighted quality score in [0, 1] (quality.py)


@dataclass
class Candidate:
    """An example in the making: stages scrub, score, mutate or drop it."""

    ref: str
    prompt: str
    code: str
    explanation: str = ""
    category: str | None = None
    target: str = "external"
    source: str = "interaction"
    interaction_id: int | None = None
    entry_point: str | None = None
    tests: str | None = None
    origin: str = ""
    mutation: str = ""
    quality: float | None = None
    factors: dict = field(default_factory=dict)
    fingerprint: str = ""  # structure of the code with names and docs erased (clean.py)

    def to_example(self) -> Example:
        return Example(self.interaction_id, self.prompt, self.code, self.explanation,
                       self.category or "uncategorized", self.target, self.source, self.ref,
                       self.origin, self.mutation, self.quality)


@dataclass(frozen=True)
class Drop:
    """Why one candidate left the pipeline, and at which stage."""

    ref: str
    stage: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict:
        out = {"ref": self.ref, "stage": self.stage, "reason": self.reason}
        return {**out, "detail": self.detail} if self.detail else out


def normalize(text: str) -> str:
    """Whitespace runs folded to one space, ends stripped, lower case."""
    return " ".join(text.split()).lower()


def render_text(prompt: str, code: str, explanation: str) -> str:
    """The example in the spec's instruction layout, as its length filter and exports see it.

    Training renders through `models.prompting` (chat template or this layout) at
    tokenisation time; this is only the text the spec measures.
    """
    text = INSTRUCTION_PROMPT.format(instruction=prompt.strip()) + code
    return text + (INSTRUCTION_EXPLANATION + explanation if explanation else "")


def formatted_length(prompt: str, code: str, explanation: str) -> int:
    """Characters of the example in the spec's instruction layout (what its filter measures)."""
    return len(render_text(prompt, code, explanation))


_CALL_NAME = re.compile(r"`\s*(?:def\s+)?([A-Za-z_]\w*)\s*\(")
_CLASS_NAME = re.compile(r"\bclass\s+`([A-Za-z_]\w*)")


def entry_point_in(prompt: str) -> str | None:
    """The function (or class) a prompt asks for by name: "Write `slugify(text)` ...",
    "a class `LRUCache` ..."."""
    match = _CALL_NAME.search(prompt) or _CLASS_NAME.search(prompt)
    return match.group(1) if match else None

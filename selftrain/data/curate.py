"""Turn stored interactions and their feedback into training examples, explaining every drop.

What a user endorsed is what the model learns: their corrected code first, else an
answer they accepted or rated 4-5. Rejected and badly rated answers never become SFT
targets (they are preference-pair material for RLHF instead).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selftrain.data.collect import choose_target  # noqa: F401  (public here since the first release)
from selftrain.data.example import (MAX_CHARS, MIN_CHARS, Drop, Example,  # noqa: F401
                                    formatted_length, normalize)


@dataclass
class Curation:
    """The examples kept, and how many left at each stage and why."""

    examples: list[Example]
    n_input: int
    dropped: Counter = field(default_factory=Counter)
    stages: list[dict] = field(default_factory=list)  # {"stage", "in", "out", "seconds", ...} in order
    drops: list[Drop] = field(default_factory=list)   # one per example that left, with its stage and reason
    secrets: Counter = field(default_factory=Counter)  # secrets replaced, by kind
    synthetic: dict = field(default_factory=dict)      # {"added": n, "rejected": {reason: n}}
    scores: list[float] = field(default_factory=list)  # quality score of every scored candidate
    config: dict = field(default_factory=dict)

    def stats(self) -> dict:
        kept = [e.quality for e in self.examples if e.quality is not None]
        return {"input": self.n_input, "kept": len(self.examples), "dropped": dict(self.dropped),
                "targets": dict(Counter(e.target for e in self.examples)),
                "categories": dict(Counter(e.category for e in self.examples)),
                "stages": self.stages, "secrets": dict(self.secrets), "synthetic": self.synthetic,
                "quality": {"scored": quality_summary(self.scores), "kept": quality_summary(kept)},
                "config": self.config, "drops": [d.to_json() for d in self.drops]}


def quality_summary(scores: list[float]) -> dict:
    """Count, mean, quartiles and a 10-bin histogram over [0, 1] of quality scores."""
    if not scores:
        return {"n": 0}
    ordered = sorted(scores)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    bins = [0] * 10
    for s in ordered:
        bins[min(9, int(s * 10))] += 1
    return {"n": len(ordered), "mean": round(sum(ordered) / len(ordered), 4), "min": ordered[0],
            "p25": at(0.25), "median": at(0.5), "p75": at(0.75), "max": ordered[-1], "histogram": bins}


def curate_interactions(items, *, exclude_prompts: set[str] = frozenset(),
                        exclude_entry_points: set[str] = frozenset(), exclusions=None,
                        config=None, verify=None, embed=None, external=()) -> Curation:
    """`items` are (interaction, feedback summary) pairs; nothing here touches a database.

    `exclude_*` hold the evaluation suite's normalised prompts and function names (or pass
    a `clean.Exclusions` built from every suite): an item the model will be judged on must
    never be trained on. `external` adds candidates read by `collect.read_external`;
    `config` is a `pipeline.CurationConfig`; `verify(code, tests) -> bool` checks mutants.
    """
    from selftrain.data.clean import Exclusions
    from selftrain.data.collect import candidates_from_interactions
    from selftrain.data.pipeline import curate

    candidates, drops = candidates_from_interactions(items)
    candidates += list(external)
    if exclusions is None:
        exclusions = Exclusions(prompts=set(exclude_prompts), entry_points=set(exclude_entry_points))
    return curate(candidates, drops, config=config, exclusions=exclusions, verify=verify, embed=embed)


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


def snapshot_digest(examples: list[Example]) -> str:
    """The id `write_snapshot` would give these examples."""
    lines = [json.dumps(asdict(e), sort_keys=True, ensure_ascii=False) for e in examples]
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()

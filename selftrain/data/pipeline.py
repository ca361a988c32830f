"""The curation pipeline, stage by stage, counting what goes in and out of each and why
every dropped example left:

    collect → scrub secrets → length (spec layout) → eval-suite overlap → quality
      → exact and near duplicates → synthesize (mutants, checked like the rest) → balance

Scrubbing runs before anything else reads the text. Length comes before quality so that
a too-short fragment is reported as such; overlap before synthesis so no mutant of an
evaluation problem is made. Mutants pass the same length, quality and duplicate checks
(and their tests, when they have any) before they join; balancing comes last so the
final set is balanced.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from selftrain.data.clean import Exclusions, NearDuplicateIndex, balance, categorize, exact_key
from selftrain.data.curate import Curation
from selftrain.data.example import MAX_CHARS, MIN_CHARS, Candidate, Drop, formatted_length
from selftrain.data.quality import Embedder, analyze_code, score_quality
from selftrain.data.scrub import scrub_fields
from selftrain.data.synthesize import MUTATIONS, Verify, synthesize


@dataclass
class CurationConfig:
    """How examples are filtered, multiplied and balanced. Defaults follow the spec."""

    quality_threshold: float = 0.7
    """Minimum weighted quality score in [0, 1] (spec: 0.7)."""
    min_coherence: float = 0.3
    """Minimum semantic-coherence factor: with the spec's weights, perfectly formed code
    that answers another question still scores 0.7, so coherence is also a gate."""
    min_chars: int = MIN_CHARS
    """Shortest example in the spec's instruction layout, characters (spec: 50)."""
    max_chars: int = MAX_CHARS
    """Longest example in the spec's instruction layout, characters (spec: 2048)."""
    synthetic_per_example: int = 0
    """Mutants to make of each example (0 = none); each by a different mutation."""
    mutations: tuple[str, ...] = MUTATIONS
    """Which mutations synthesis may use: rename, comments, style, complexity."""
    balance: str = "smallest"
    """'smallest': down-sample every category to the smallest one's size (spec);
    'none': no down-sampling (the cap still applies)."""
    balance_floor: int = 10
    """Never down-sample a category below this many examples: one stray example in a rare
    category would otherwise shrink every category to one."""
    category_cap: int | None = None
    """At most this many examples per category (None = no cap)."""
    near_duplicates: bool = True
    """Remove near-duplicates as well as exact ones (see clean.py)."""
    seed: int = 0
    """Seed for mutation choices and balancing."""
    verify_workers: int = 2
    """Mutants whose tests run at once."""
    workers: int = 1
    """Processes for the per-example work (scrubbing, parsing, scoring); 1 = in process."""

    @classmethod
    def from_settings(cls, settings, **overrides) -> CurationConfig:
        values = {"quality_threshold": settings.quality_threshold, "seed": settings.seed}
        for name in ("synthetic_per_example", "balance", "balance_floor", "category_cap", "min_coherence"):
            if hasattr(settings, "curation_" + name):  # optional settings (curation_category_cap 0 = none)
                values[name] = getattr(settings, "curation_" + name)
        if values.get("category_cap") == 0:
            values["category_cap"] = None
        return cls(**{**values, **overrides})


@dataclass
class Prepared:
    """The per-example work, done in one pass (and in worker processes when asked)."""

    fields: dict
    secrets: list[str]
    category: str
    fingerprint: str
    parsed: bool
    quality: dict = field(default_factory=dict)
    score: float = 0.0


def prepare(c: Candidate, embed: Embedder | None = None) -> Prepared:
    fields, findings = scrub_fields({"prompt": c.prompt, "code": c.code, "explanation": c.explanation,
                                     "tests": c.tests})
    facts = analyze_code(fields["code"])
    quality = score_quality(fields["prompt"], fields["code"], fields["explanation"] or "",
                            c.entry_point, facts=facts, embed=embed)
    return Prepared(fields, [f.kind for f in findings],
                    c.category or categorize(fields["prompt"], fields["code"]), facts.fingerprint,
                    facts.parsed, quality.to_json(), quality.score)


def _prepare_chunk(chunk: list[Candidate]) -> list[Prepared]:
    return [prepare(c) for c in chunk]


def _prepare_all(cands: list[Candidate], workers: int, embed: Embedder | None) -> list[Prepared]:
    if workers <= 1 or embed is not None or len(cands) < 200:
        return [prepare(c, embed) for c in cands]
    size = max(50, len(cands) // (workers * 4))
    chunks = [cands[i:i + size] for i in range(0, len(cands), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [p for part in pool.map(_prepare_chunk, chunks) for p in part]


class _Stages:
    """Bookkeeping: counts in and out and seconds per stage, and every drop."""

    def __init__(self, curation: Curation):
        self.curation = curation
        self.clock = time.perf_counter()

    def done(self, name: str, n_in: int, n_out: int, **extra) -> None:
        now = time.perf_counter()
        self.curation.stages.append({"stage": name, "in": n_in, "out": n_out,
                                     "seconds": round(now - self.clock, 4), **extra})
        self.clock = now

    def drop(self, c: Candidate, stage: str, reason: str, detail: str = "") -> None:
        self.curation.drops.append(Drop(c.ref, stage, reason, detail))
        self.curation.dropped[reason] += 1


def curate(candidates: list[Candidate], drops: list[Drop] = (), *, n_input: int | None = None,
           config: CurationConfig | None = None, exclusions: Exclusions | None = None,
           verify: Verify | None = None, embed: Embedder | None = None) -> Curation:
    """Run every stage on collected candidates (`drops`: what collection already refused)."""
    config = config or CurationConfig()
    n_input = len(candidates) + len(drops) if n_input is None else n_input
    result = Curation(examples=[], n_input=n_input, config=_config_json(config))
    log = _Stages(result)
    for d in drops:
        result.drops.append(d)
        result.dropped[d.reason] += 1
    log.done("collect", n_input, len(candidates))

    # Scrub, parse and score every candidate in one pass (the decisions follow, in stage order).
    prepared = _prepare_all(candidates, config.workers, embed)
    for c, p in zip(candidates, prepared):
        c.prompt, c.code, c.explanation, c.tests = (p.fields["prompt"], p.fields["code"],
                                                    p.fields["explanation"] or "", p.fields["tests"])
        c.category, c.fingerprint, c.quality, c.factors = p.category, p.fingerprint, p.score, p.quality
        result.secrets.update(p.secrets)
    log.done("scrub + score", len(candidates), len(candidates), secrets=sum(result.secrets.values()))

    pool = list(zip(candidates, prepared))
    kept = []
    for c, p in pool:
        if config.min_chars <= formatted_length(c.prompt, c.code, c.explanation) <= config.max_chars:
            kept.append((c, p))
        else:
            log.drop(c, "length", "length")
    log.done("length", len(pool), len(kept))

    pool, kept = kept, []
    for c, p in pool:
        reason = exclusions.reason(c) if exclusions else None
        if reason:
            log.drop(c, "overlap", "overlaps evaluation suite", reason)
        else:
            kept.append((c, p))
    log.done("overlap", len(pool), len(kept))

    pool, kept = kept, []
    for c, p in pool:
        reason = _quality_reason(p, config)
        if reason:
            log.drop(c, "quality", reason, f"score {p.score:.3f}")
        else:
            kept.append(c)
    log.done("quality", len(pool), len(kept))

    seen: set[str] = set()
    index = NearDuplicateIndex() if config.near_duplicates else None
    pool, kept = kept, []
    for c in pool:
        reason = _duplicate_of(c, seen, index)
        if reason:
            log.drop(c, "dedupe", *reason)
        else:
            kept.append(c)
    log.done("dedupe", len(pool), len(kept))

    mutants, rejected = synthesize(kept, per_example=config.synthetic_per_example, seed=config.seed,
                                   verify=verify, workers=config.verify_workers, mutations=config.mutations,
                                   processes=config.workers)
    added = []
    for m, p in zip(mutants, _prepare_all(mutants, config.workers, embed)):  # scores each mutant
        m.category, m.fingerprint, m.quality, m.factors = m.category or p.category, p.fingerprint, p.score, p.quality
        if not config.min_chars <= formatted_length(m.prompt, m.code, m.explanation) <= config.max_chars:
            reason = ("length", "")
        elif q := _quality_reason(p, config):
            reason = (q, f"score {p.score:.3f}")
        else:
            reason = _duplicate_of(m, seen, index)
        if reason:
            rejected[reason[0]] += 1
            result.drops.append(Drop(m.ref, "synthesize", *reason))
        else:
            added.append(m)
    result.synthetic = {"added": len(added), "rejected": dict(rejected)}
    log.done("synthesize", len(kept), len(kept) + len(added), added=len(added))

    pool = kept + added
    kept, removed = balance(pool, mode=config.balance, cap=config.category_cap, floor=config.balance_floor,
                            seed=config.seed)
    for c in removed:
        log.drop(c, "balance", "balance", f"category {c.category}")
    log.done("balance", len(pool), len(kept))

    result.examples = [c.to_example() for c in kept]
    result.scores = [p.score for p in prepared]
    return result


def _quality_reason(p: Prepared, config: CurationConfig) -> str | None:
    if not p.parsed:
        return "syntax error"
    if p.quality["coherence"] < config.min_coherence:
        return "off topic"
    if p.score < config.quality_threshold:
        return "low quality"
    return None


def _duplicate_of(c: Candidate, seen: set[str], index: NearDuplicateIndex | None) -> tuple[str, str] | None:
    key = exact_key(c)
    if key in seen:
        return "duplicate", ""
    seen.add(key)
    if index is not None and (twin := index.match(c)):
        return "near duplicate", f"of {twin}"
    return None


def _config_json(config: CurationConfig) -> dict:
    out = asdict(config)
    out["mutations"] = list(config.mutations)
    return out


"""The curation pipeline, stage by stage, counting what goes in and out of each and why
every dropped example left:

    collect → scrub secrets → length (spec layout) → eval-suite overlap → quality
      → exact and near duplicates → synthesize (mutants, checked like the rest) → balance

Scrubbing runs before anything else reads the text. Length comes before quality so that
a too-short fragment is reported as such; overlap before synthesis so no mutant of an
evaluation problem is made. Mutants pass the same length, quality and duplicate checks
(and their tests, when they have any) before they join; balancing comes last so the
final set is balanced, and synthesis makes only the mutants balancing will keep.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace

from selftrain.data.clean import (Exclusions, NearDuplicateIndex, Sketch, balance, balance_group, balance_key,
                                  balance_limit, categorize, exact_key, sketches)
from selftrain.data.curate import Curation
from selftrain.data.example import MAX_CHARS, MIN_CHARS, Candidate, Drop, formatted_length
from selftrain.data.quality import Embedder, analyze_code, score_quality
from selftrain.data.scrub import scrub_fields
from selftrain.data.synthesize import MUTATIONS, Verify, mutable, mutants_of, verify_mutants
from selftrain.data.workers import process_pool


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
    """Processes for the per-example work (scrubbing, parsing, scoring, mutation); 1 = in process."""

    @classmethod
    def from_settings(cls, settings, **overrides) -> CurationConfig:
        values = {"quality_threshold": settings.quality_threshold, "seed": settings.seed}
        for name in ("synthetic_per_example", "balance", "balance_floor", "category_cap", "min_coherence", "workers"):
            if hasattr(settings, "curation_" + name):  # optional settings (curation_category_cap 0 = none)
                values[name] = getattr(settings, "curation_" + name)
        if values.get("category_cap") == 0:
            values["category_cap"] = None
        if values.get("workers") == 0:
            values["workers"] = os.cpu_count() or 1
        return cls(**{**values, **overrides})


@dataclass
class Prepared:
    """The per-example work, done in one pass (and in worker processes when asked): every
    decision that needs only the example itself is taken here; the stages that compare
    examples with each other (duplicates, balance) run in order in the main process."""

    fields: dict
    secrets: list[str]
    category: str
    fingerprint: str
    parsed: bool
    quality: dict = field(default_factory=dict)
    score: float = 0.0
    length: int = 0  # characters in the spec's instruction layout
    overlap: str | None = None  # why it overlaps an evaluation suite, if it does
    exact: str = ""  # exact-duplicate key
    sketch: Sketch | None = None  # for near-duplicate search


def prepare(cands: list[Candidate], embed: Embedder | None = None, exclusions: Exclusions | None = None,
            near: bool = True, trees: list | None = None, scrubbed: bool = False) -> list[Prepared]:
    """Everything that needs only the example itself, for each of `cands`: scrubbed fields,
    code facts and quality, category, length, suite overlap, exact-duplicate key and (with
    `near`) the near-duplicate sketch. `trees`: each candidate's code already parsed;
    `scrubbed`: the texts were scrubbed already (mutants, made from scrubbed examples)."""
    out, scrubbed_cands = [], []
    for i, c in enumerate(cands):
        if scrubbed:
            fields, findings = {"prompt": c.prompt, "code": c.code, "explanation": c.explanation, "tests": c.tests}, []
        else:
            fields, findings = scrub_fields({"prompt": c.prompt, "code": c.code, "explanation": c.explanation,
                                             "tests": c.tests})
        facts = analyze_code(fields["code"], trees[i] if trees else None)
        quality = score_quality(fields["prompt"], fields["code"], fields["explanation"] or "",
                                c.entry_point, facts=facts, embed=embed)
        final = replace(c, prompt=fields["prompt"], code=fields["code"], fingerprint=facts.fingerprint)
        scrubbed_cands.append(final)
        out.append(Prepared(fields, [f.kind for f in findings],
                            c.category or categorize(fields["prompt"], fields["code"]), facts.fingerprint,
                            facts.parsed, quality.to_json(), quality.score,
                            length=formatted_length(fields["prompt"], fields["code"], fields["explanation"] or ""),
                            overlap=exclusions.reason(final) if exclusions else None, exact=exact_key(final)))
    if near:
        for p, sk in zip(out, sketches(scrubbed_cands)):
            p.sketch = sk
    return out


def mutate_and_prepare(cands: list[Candidate], per_example: int, seed: int, mutations: tuple[str, ...],
                       embed: Embedder | None = None,
                       near: bool = True) -> list[tuple[list[tuple[Candidate, Prepared]], int]]:
    """For each of `cands`: its mutants, each with its `Prepared` (made from the mutant's
    syntax tree, in the process that made it: nothing is parsed twice), and how many
    mutants could not be made."""
    made = [mutants_of(c, per_example, seed, mutations) for c in cands]
    mutants = [pair for pairs, _ in made for pair in pairs]
    prepared = iter(prepare([m for m, _ in mutants], embed, near=near, trees=[t for _, t in mutants], scrubbed=True))
    return [([(m, next(prepared)) for m, _ in pairs], missing) for pairs, missing in made]


def _prepare_stream(cands: list[Candidate], pool, workers: int, embed: Embedder | None,
                    exclusions: Exclusions | None = None, near: bool = True) -> Iterator[Prepared]:
    """`prepare` for each candidate, yielded in order as soon as it is ready; identical
    candidates (a repeated request and answer) are prepared once. With a process `pool` (of
    `workers` processes), in its workers, working ahead of the consumer."""
    slot: dict[tuple, int] = {}
    unique: list[Candidate] = []
    order = []
    for c in cands:
        key = (c.prompt, c.code, c.explanation, c.tests, c.category, c.entry_point)
        if key not in slot:
            slot[key] = len(unique)
            unique.append(c)
        order.append(slot[key])
    size = _chunk_size(len(unique), workers, 50)
    chunks = [unique[i:i + size] for i in range(0, len(unique), size)]
    if pool is None or len(unique) < 200:
        parts = (prepare(chunk, embed, exclusions, near) for chunk in chunks)
    else:
        parts = pool.map(functools.partial(prepare, exclusions=exclusions, near=near), chunks)
    done: list[Prepared] = []
    for i in order:
        while len(done) <= i:
            done += next(parts)
        yield done[i]


def _chunk_size(n: int, workers: int, least: int) -> int:
    """Work items per task: small enough that no worker idles long at the end."""
    return max(least, min(250, n // (8 * workers)))


class _Synthesis:
    """Mutants of the kept examples, made only where balancing will keep them.

    Balancing keeps each category's real examples first, then its synthetic ones in
    `balance_key` order, where a mutant stands in its origin's place. So a category's
    examples are mutated in that order, and only until its mutants that passed every check
    fill the room the final limit could still leave it (`balance_limit` over the most each
    category could still reach). A mutant not made is one balancing would have dropped: the
    kept set is the one making every mutant would give, except that a mutant balancing
    drops no longer counts as another's near duplicate. With no limit (balance 'none', no
    cap) every mutant is made.

    Mutants are made in the process `pool` (or here), in chunks, and handed back in the
    order they were asked for. At most `IN_HAND` chunks (of 4–64 examples, by the amount of
    work) are asked for ahead of what came back: what comes back (mutations that do not
    apply, mutants that fail a check) tightens the limit before more is asked, and the
    categories that could reach least, which set the limit, are asked for first. Chunks
    and their order depend only on what came back before, never on the number of
    workers, so neither does the result.
    """

    IN_HAND = 8

    def __init__(self, kept: list[Candidate], config: CurationConfig, verify: Verify | None,
                 embed: Embedder | None, pool):
        self.run = functools.partial(mutate_and_prepare, per_example=config.synthetic_per_example,
                                     seed=config.seed, mutations=config.mutations, near=config.near_duplicates)
        self.config, self.embed, self.pool = config, embed, pool
        self.per = config.synthetic_per_example
        todo, self.rejected = mutable(kept, self.per, verify)
        self.size = max(4, min(64, -(-len(todo) // 64)))  # examples per chunk
        self.sizes = Counter(balance_group(c) for c in kept)  # every kept example, real or synthetic
        self.real = Counter(balance_group(c) for c in kept if c.source != "synthetic")
        self.queues: dict[str, deque] = {}  # per category, its examples in balance order
        for c in sorted(todo, key=lambda c: balance_key(c, config.seed)):
            self.queues.setdefault(balance_group(c), deque()).append(c)
        self.added: Counter = Counter()  # mutants that passed every check, per category
        self.flying: Counter = Counter()  # examples being mutated, per category
        self.pending: deque = deque()  # (examples, future or None), in the order asked

    def parts(self) -> Iterator[list]:
        """Each chunk's `mutate_and_prepare` result, in order; `passed(m)` for each mutant that
        joins, before the next chunk is asked for."""
        self._ask()
        while self.pending:
            chunk, future = self.pending.popleft()
            yield future.result() if future is not None else self.run(chunk, embed=self.embed)
            for c in chunk:
                self.flying[balance_group(c)] -= 1
            self._ask()

    def passed(self, m: Candidate) -> None:
        self.added[balance_group(m)] += 1

    @property
    def skipped(self) -> int:
        """Examples not mutated: balancing would have dropped their mutants."""
        return sum(len(q) for q in self.queues.values())

    def _wanted(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many more examples to mutate, per category, if every mutant passes; and the
        most each category could still reach."""
        reach = {k: n + self.added[k] + self.per * (len(self.queues.get(k, ())) + self.flying[k])
                 for k, n in self.sizes.items()}
        limit = balance_limit(reach.values(), mode=self.config.balance, cap=self.config.category_cap,
                              floor=self.config.balance_floor)
        wanted = {}
        for k, q in self.queues.items():
            room = len(q) * self.per if limit is None else (
                limit - self.real[k] - self.added[k] - self.per * self.flying[k])
            wanted[k] = min(len(q), max(0, -(-room // self.per)))
        return wanted, reach

    def _ask(self) -> None:
        """Ask for the examples wanted, up to `IN_HAND` chunks in hand: first from the
        categories that could reach least (they set the limit; the others wait for it to
        tighten), each in balance order."""
        room = (self.IN_HAND - len(self.pending)) * self.size
        if room <= 0:
            return
        wanted, reach = self._wanted()
        batch = []
        for k in sorted(wanted, key=lambda k: (reach[k], k)):
            take = min(wanted[k], room - len(batch))
            batch += [self.queues[k].popleft() for _ in range(take)]
            self.flying[k] += take
        for i in range(0, len(batch), self.size):
            chunk = batch[i:i + self.size]
            self.pending.append((chunk, self.pool.submit(self.run, chunk) if self.pool is not None else None))


_IN_ORDER = ("length", "overlap", "quality", "dedupe")  # stages each example meets in turn


class _Stages:
    """Bookkeeping: counts in and out and seconds per stage, and every drop."""

    def __init__(self, curation: Curation):
        self.curation = curation
        self.clock = time.perf_counter()

    def done(self, name: str, n_in: int, n_out: int, **extra) -> None:
        """Record a stage that ran on its own, timed from the previous stage's end."""
        now = time.perf_counter()
        self.record(name, n_in, n_out, now - self.clock, **extra)
        self.clock = now

    def record(self, name: str, n_in: int, n_out: int, seconds: float, **extra) -> None:
        self.curation.stages.append({"stage": name, "in": n_in, "out": n_out, "seconds": round(seconds, 4), **extra})
        self.clock = time.perf_counter()

    def drop(self, c: Candidate, stage: str, reason: str, detail: str = "") -> None:
        self.curation.drops.append(Drop(c.ref, stage, reason, detail))
        self.curation.dropped[reason] += 1


@contextmanager
def collector_paused():
    """The cyclic garbage collector off for a block, and back as it was after. Curation makes
    millions of short-lived objects (syntax trees above all) and little or no cyclic garbage:
    reference counting frees them, while the collector would walk the whole heap again and
    again for nothing (a fifth of a curation's time with synthesis on, in one process)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def curate(candidates: list[Candidate], drops: list[Drop] = (), *, n_input: int | None = None,
           config: CurationConfig | None = None, exclusions: Exclusions | None = None,
           verify: Verify | None = None, embed: Embedder | None = None) -> Curation:
    """Run every stage on collected candidates (`drops`: what collection already refused)."""
    with collector_paused():
        return _curate(candidates, drops, n_input=n_input, config=config, exclusions=exclusions, verify=verify,
                       embed=embed)


def _curate(candidates: list[Candidate], drops, *, n_input, config, exclusions, verify, embed) -> Curation:
    config = config or CurationConfig()
    n_input = len(candidates) + len(drops) if n_input is None else n_input
    result = Curation(examples=[], n_input=n_input, config=_config_json(config))
    log = _Stages(result)
    for d in drops:
        result.drops.append(d)
        result.dropped[d.reason] += 1
    log.done("collect", n_input, len(candidates))

    # The per-example work (scrub, parse, score, suite overlap, sketches) runs ahead, in
    # worker processes when config.workers > 1 (one pool for every stage), while here each
    # example meets the stages in order as its results arrive: the in-order stages
    # (duplicates above all) overlap the workers. A stage's seconds are this process's time
    # in it; "scrub + score" is the time spent preparing (one process) or waiting for the
    # workers.
    flow = {name: [0, 0, 0.0] for name in ("scrub + score", *_IN_ORDER)}  # in, out, seconds
    seen: set[str] = set()
    index = NearDuplicateIndex() if config.near_duplicates else None
    kept = []
    scores = []
    with ExitStack() as stack:
        processes = None
        if config.workers > 1 and embed is None and len(candidates) >= 200:
            processes = stack.enter_context(process_pool(config.workers))
            stack.callback(processes.shutdown, cancel_futures=True)  # on an error, drop the work still queued
        clock = time.perf_counter()
        stream = _prepare_stream(candidates, processes, config.workers, embed, exclusions, config.near_duplicates)
        for c, p in zip(candidates, stream):
            c.prompt, c.code, c.explanation, c.tests = (p.fields["prompt"], p.fields["code"],
                                                        p.fields["explanation"] or "", p.fields["tests"])
            c.category, c.fingerprint, c.quality, c.factors = p.category, p.fingerprint, p.score, p.quality
            result.secrets.update(p.secrets)
            scores.append(p.score)
            now = time.perf_counter()
            flow["scrub + score"][2] += now - clock
            for name in _IN_ORDER:
                flow[name][0] += 1
                dropped = _verdict(name, c, p, config, seen, index)
                clock = time.perf_counter()
                flow[name][2] += clock - now
                now = clock
                if dropped:
                    log.drop(c, name, *dropped)
                    break
                flow[name][1] += 1
            else:
                kept.append(c)
        log.record("scrub + score", len(candidates), len(candidates), flow.pop("scrub + score")[2],
                   secrets=sum(result.secrets.values()))
        for name, (n_in, n_out, seconds) in flow.items():
            log.record(name, n_in, n_out, seconds)

        # Mutants of the kept examples, made (in the pool) where balancing will keep them;
        # they meet their checks here, in order, after every real example.
        synthesis = _Synthesis(kept, config, verify, embed, processes)
        added, rejected = _check_mutants(synthesis, config, verify, seen, index, result)
    result.synthetic = {"added": len(added), "rejected": dict(rejected)}
    if synthesis.skipped:
        result.synthetic["skipped for balance"] = synthesis.skipped
    log.done("synthesize", len(kept), len(kept) + len(added), added=len(added))

    pool = kept + added
    kept, removed = balance(pool, mode=config.balance, cap=config.category_cap, floor=config.balance_floor,
                            seed=config.seed)
    for c in removed:
        log.drop(c, "balance", "balance", f"category {c.category}")
    log.done("balance", len(pool), len(kept))

    result.examples = [c.to_example() for c in kept]
    result.scores = scores
    return result


def _check_mutants(synthesis: _Synthesis, config: CurationConfig, verify: Verify | None, seen: set[str],
                   index: NearDuplicateIndex | None, result: Curation) -> tuple[list[Candidate], Counter]:
    """(the mutants that join, Counter of the others by reason). Each chunk of mutants, in
    order, is verified (their tests, in the sandbox) and checked like real examples while the
    workers go on with the next chunks."""
    rejected = synthesis.rejected
    added = []
    for part in synthesis.parts():
        if missing := sum(n for _, n in part):
            rejected["no applicable mutation"] += missing
        made = [pair for pairs, _ in part for pair in pairs]
        passed, failed = verify_mutants([m for m, _ in made], verify, config.verify_workers)
        rejected += failed
        passed_ids = {id(m) for m in passed}
        for m, p in made:
            if id(m) not in passed_ids:
                continue
            m.category, m.fingerprint, m.quality, m.factors = m.category or p.category, p.fingerprint, p.score, p.quality
            # the checks real examples pass (a mutant of one of them overlaps no suite); lazily, in order
            reason = next(filter(None, (_verdict(stage, m, p, config, seen, index)
                                        for stage in ("length", "quality", "dedupe"))), None)
            if reason:
                rejected[reason[0]] += 1
                result.drops.append(Drop(m.ref, "synthesize", *reason))
            else:
                added.append(m)
                synthesis.passed(m)
    return added, rejected


def _verdict(stage: str, c: Candidate, p: Prepared, config: CurationConfig, seen: set[str],
             index: NearDuplicateIndex | None) -> tuple[str, str] | None:
    """(reason, detail) when `stage` drops the example, else None."""
    if stage == "length":
        return None if config.min_chars <= p.length <= config.max_chars else ("length", "")
    if stage == "overlap":
        return ("overlaps evaluation suite", p.overlap) if p.overlap else None
    if stage == "quality":
        reason = _quality_reason(p, config)
        return (reason, f"score {p.score:.3f}") if reason else None
    return _duplicate_of(c, p, seen, index)


def _quality_reason(p: Prepared, config: CurationConfig) -> str | None:
    if not p.parsed:
        return "syntax error"
    if p.quality["coherence"] < config.min_coherence:
        return "off topic"
    if p.score < config.quality_threshold:
        return "low quality"
    return None


def _duplicate_of(c: Candidate, p: Prepared, seen: set[str], index: NearDuplicateIndex | None) -> tuple[str, str] | None:
    if p.exact in seen:
        return "duplicate", ""
    seen.add(p.exact)
    if index is not None and (twin := index.match(c, p.sketch)):
        return "near duplicate", f"of {twin}"
    return None


def _config_json(config: CurationConfig) -> dict:
    out = asdict(config)
    out["mutations"] = list(config.mutations)
    return out


"""Cleaning stages: evaluation-suite overlap, duplicates, categories and balance.

Duplicates, in two passes:
- exact: the same normalised prompt and code (whitespace and case folded);
- near: the same *program* (equal structural fingerprints — the syntax tree with names
  renamed by order of appearance and docstrings dropped, so renaming variables or
  reformatting does not hide a copy — or MinHash-estimated Jaccard similarity ≥ 0.8 of
  code token 5-grams, confirmed exactly) asked for by a *similar prompt* (word Jaccard
  ≥ 0.5). The same code answering differently worded requests is kept: it teaches the
  mapping from varied phrasings. Mutants of one example are never each other's
  duplicates (they are meant to be alike); each is checked against everything else.

MinHash (Broder 1997) with 32 hash functions in 8 LSH bands of 4 rows finds pairs with
Jaccard ≳ 0.6 with high probability while comparing each example with a handful of
others instead of all of them.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate

from selftrain.data.example import Candidate, entry_point_in, normalize
from selftrain.data.memo import Memo

NEAR_CODE_JACCARD = 0.8
NEAR_PROMPT_JACCARD = 0.5
SHINGLE = 5
_BANDS, _ROWS = 8, 4
_MASK = 0xFFFFFFFF
_TOKEN = re.compile(r"\w+|\S")  # the same tokens as \w+|[^\w\s], faster
_WORD = re.compile(r"[a-z0-9_]+")


# --- evaluation-suite overlap ---------------------------------------------------------

def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class Exclusions:
    """What the evaluation suites hold, so that no training example overlaps them.

    An example overlaps when its normalised prompt equals a suite prompt, shares at least
    half of a suite prompt's word 6-grams (a paraphrase wrapped around the same
    problem statement), asks for a suite entry point by name, or its code is a suite
    reference solution up to renaming (equal structural fingerprint).
    """

    prompts: set[str] = field(default_factory=set)   # normalised
    entry_points: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)
    ngram_size: int = 6
    _grams: dict = field(default_factory=dict, repr=False)
    _sizes: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.prompts = {normalize(p) for p in self.prompts}
        for i, prompt in enumerate(sorted(self.prompts)):
            grams = _ngrams(_WORD.findall(prompt), self.ngram_size)
            self._sizes.append(len(grams))
            for gram in grams:
                self._grams.setdefault(gram, []).append(i)

    @classmethod
    def from_problems(cls, problems) -> Exclusions:
        """From evaluation problems (anything with .prompt, .entry_point and .reference)."""
        from selftrain.data.quality import analyze_code

        problems = list(problems)
        references = [getattr(p, "reference", None) for p in problems]
        return cls(prompts={p.prompt for p in problems},
                   entry_points={p.entry_point for p in problems if p.entry_point},
                   fingerprints={f for r in references if r and (f := analyze_code(r).fingerprint)})

    def __bool__(self) -> bool:
        return bool(self.prompts or self.entry_points or self.fingerprints)

    def reason(self, c: Candidate) -> str | None:
        """A short explanation when `c` overlaps a suite, else None."""
        prompt = normalize(c.prompt)
        if prompt in self.prompts:
            return "same prompt"
        entry = c.entry_point or entry_point_in(c.prompt)
        if entry and entry in self.entry_points:
            return f"entry point {entry!r}"
        if c.fingerprint and c.fingerprint in self.fingerprints:
            return "code equals a reference solution"
        if self._grams:
            hits: Counter = Counter()
            grams = self._grams
            for gram in _ngrams(_WORD.findall(prompt), self.ngram_size):
                if gram in grams:
                    hits.update(grams[gram])
            if any(n * 2 >= self._sizes[i] for i, n in hits.items()):
                return "prompt shares most of a suite prompt's 6-grams"
        return None


# --- duplicates ------------------------------------------------------------------------

def exact_key(c: Candidate) -> str:
    return hashlib.blake2b(f"{normalize(c.prompt)}\x00{normalize(c.code)}".encode(), digest_size=16).hexdigest()


_token_ids = Memo(lambda token: zlib.crc32(token.encode()))  # the same in every process


_POLY = 0x100000001B3  # the 5-gram hash's multiplier (odd, 64-bit)


def _shingles(code: str):
    """Hashes of the code's token 5-grams, as a sorted array of distinct uint64: each token
    hashed once (crc32, the same in every process), each 5-gram as a polynomial of its five
    token hashes modulo 2⁶⁴, computed for all 5-grams at once."""
    import numpy as np

    ids = np.fromiter(map(_token_ids.__getitem__, _TOKEN.findall(code)), dtype=np.uint64)
    n = len(ids) - SHINGLE + 1
    if n <= 0:  # fewer tokens than a shingle: one hash of them all
        ids, n = np.concatenate([np.zeros(-n + 1, dtype=np.uint64), ids]), 1
    hashes = ids[:n].copy()
    for k in range(1, SHINGLE):
        hashes *= np.uint64(_POLY)
        hashes += ids[k:k + n]
    hashes.sort()  # distinct values, as np.unique gives them but without its 10 µs of overhead
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(hashes[1:], hashes[:-1], out=first[1:])
    return hashes[first]


def _minhash(shingle_arrays: list) -> list[bytes]:
    """The MinHash signature of each shingle array (32 uint32 values, as bytes), vectorised
    over blocks of arrays. Hash function i is x ↦ (aᵢ·x + bᵢ mod 2⁶⁴) >> 32 over the
    shingle's low 32 bits (multiply-shift: universal, and no integer division)."""
    import numpy as np

    a, b = _seeds()
    out: list[bytes] = []
    for first in range(0, len(shingle_arrays), 64):
        block = shingle_arrays[first:first + 64]
        x = np.concatenate(block) & np.uint64(_MASK)
        hashed = np.multiply.outer(a, x)  # [32 × shingles of the block], hashed in place
        hashed += b[:, None]
        hashed >>= np.uint64(32)
        starts = np.cumsum([0] + [len(s) for s in block[:-1]])
        mins = np.minimum.reduceat(hashed, starts, axis=1).T.astype(np.uint32)
        out += [row.tobytes() for row in mins]
    return out


def _jaccard_reaches(both: int, x_size: int, y_size: int, threshold: float) -> bool:
    """Jaccard ≥ threshold for sets of these sizes with `both` elements in common."""
    union = x_size + y_size - both
    return both >= threshold * union if union else True


def _could_reach(x_size: int, y_size: int, threshold: float) -> bool:
    """Whether sets of these sizes can reach the Jaccard threshold at all (J ≤ min/max)."""
    small, large = (x_size, y_size) if x_size <= y_size else (y_size, x_size)
    return small >= threshold * large


def _common(mine, others: list) -> list[int]:
    """|mine ∩ other| for each of `others`: sorted numpy arrays of distinct values, all
    counted in one vectorised pass (a binary search of every other value in `mine`). Few
    numpy calls, and array methods rather than numpy's module functions: the arrays are
    small, so per-call overhead is most of the cost."""
    import numpy as np

    together = np.concatenate(others)
    if not len(mine) or not len(together):
        return [0] * len(others)
    at = mine.searchsorted(together)
    np.minimum(at, len(mine) - 1, out=at)
    hits = mine[at] == together
    lengths = [len(o) for o in others]
    if 0 in lengths:  # reduceat needs every segment non-empty
        found = [0, *accumulate(hits.tolist())]
        ends = list(accumulate(lengths))
        return [found[end] - found[end - n] for end, n in zip(ends, lengths)]
    return np.add.reduceat(hits, list(accumulate(lengths[:-1], initial=0)), dtype=np.intp).tolist()


@functools.cache
def _seeds():
    import numpy as np

    rng = random.Random(0x5E1F)  # fixed, so the same data always dedupes the same way
    n = _BANDS * _ROWS
    return (np.array([rng.randrange(1, 1 << 64) | 1 for _ in range(n)], dtype=np.uint64),  # odd multipliers
            np.array([rng.randrange(0, 1 << 64) for _ in range(n)], dtype=np.uint64))


@dataclass(frozen=True)
class Sketch:
    """What near-duplicate search needs of one candidate, computed once (in a curation
    worker process when there are several) and compact to send back: code shingles (sorted
    uint64 array bytes), the prompt's distinct words (one string, space-separated: it
    pickles ~20 times faster than a set of them), MinHash signature (uint32 array bytes)."""

    shingles: bytes
    words: str
    signature: bytes

    def shingle_array(self):
        import numpy as np

        return np.frombuffer(self.shingles, dtype=np.uint64)

    def bands(self) -> list[tuple[int, bytes]]:
        width = 4 * _ROWS
        return [(band, self.signature[band * width:(band + 1) * width]) for band in range(_BANDS)]


def sketches(cands: list[Candidate]) -> list[Sketch]:
    """`Sketch` of each candidate (MinHash computed for all of them at once)."""
    shingle_arrays = [_shingles(c.code) for c in cands]
    signatures = _minhash(shingle_arrays) if cands else []
    return [Sketch(shingles.tobytes(), " ".join(set(_WORD.findall(c.prompt.lower()))), sig)
            for c, shingles, sig in zip(cands, shingle_arrays, signatures)]


class NearDuplicateIndex:
    """Examples seen so far; `match(c)` returns the ref of a near-duplicate of `c`, or None."""

    def __init__(self):
        self._fingerprints: list[str] = []
        self._bands: dict[tuple, list[int]] = defaultdict(list)
        self._by_fingerprint: dict[str, list[int]] = defaultdict(list)
        self._items: list[tuple[str, str]] = []  # (ref, family)
        self._shingles: list = []  # sorted uint64 arrays
        # prompt words as bit sets (an int, one bit per word seen): a prompt comparison is an
        # AND and a popcount instead of a set intersection
        self._vocabulary: dict[str, int] = {}
        self._words: list[tuple[int, int]] = []  # (bit set, word count)

    @staticmethod
    def family(c: Candidate) -> str:
        return c.origin or c.ref

    def _bits(self, words: list[str]) -> int:
        vocabulary, bits = self._vocabulary, 0
        for word in words:
            bit = vocabulary.get(word)
            if bit is None:
                bit = vocabulary[word] = len(vocabulary)
            bits |= 1 << bit
        return bits

    def match(self, c: Candidate, sketched: Sketch | None = None) -> str | None:
        """`sketched`: `sketches([c])[0]`, when it was computed already."""
        sk = sketched or sketches([c])[0]
        family = self.family(c)
        bands = sk.bands()
        candidates = set(self._by_fingerprint.get(c.fingerprint, ())) if c.fingerprint else set()
        for key in bands:
            candidates.update(self._bands.get(key, ()))
        distinct = sk.words.split()
        words, n_words = self._bits(distinct), len(distinct)
        shingles = sk.shingle_array()
        if candidates:
            twin = self._twin(sorted(candidates), family, c.fingerprint, words, n_words, shingles)
            if twin is not None:
                return twin
        index = len(self._items)
        self._items.append((c.ref, family))
        self._words.append((words, n_words))
        self._shingles.append(shingles)
        self._fingerprints.append(c.fingerprint)
        for key in bands:
            self._bands[key].append(index)
        if c.fingerprint:
            self._by_fingerprint[c.fingerprint].append(index)
        return None

    def _twin(self, candidates: list[int], family: str, fingerprint: str, words: int, n_words: int,
              shingles) -> str | None:
        """The ref of the first of `candidates` (index positions, in order) from another family
        whose prompt is similar and whose code is the same program or similar."""
        similar = []
        for i in candidates:
            if self._items[i][1] != family:
                bits, size = self._words[i]
                if _jaccard_reaches((words & bits).bit_count(), n_words, size, NEAR_PROMPT_JACCARD):
                    similar.append(i)
        if not similar:
            return None
        # code similarity is needed only before the first candidate that is the same program
        same = next((k for k, i in enumerate(similar) if fingerprint and self._fingerprints[i] == fingerprint),
                    len(similar))
        compared = [i for i in similar[:same]
                    if _could_reach(len(shingles), len(self._shingles[i]), NEAR_CODE_JACCARD)]
        common = dict(zip(compared, _common(shingles, [self._shingles[i] for i in compared]))) if compared else {}
        for i in similar[:same]:
            if i in common and _jaccard_reaches(common[i], len(shingles), len(self._shingles[i]), NEAR_CODE_JACCARD):
                return self._items[i][0]
        return self._items[similar[same]][0] if same < len(similar) else None


# --- categories and balance --------------------------------------------------------------

# Keyword votes per category: each prompt hit counts 3, each code hit 1; ties go to the
# earlier category. Labels are those of the bundled demo data. A fallback only: on the
# demo interactions it agrees with the given label 85 times in 130, on the held-out demo
# evaluation suite 22 in 40 (10 classes; chance is 1 in 10).
_CATEGORY_KEYWORDS = {
    "classes": (r"^\s*class\s|@dataclass|\bself\b", r"\bclass\b|\bmethods?\b|\battributes?\b|\binstances?\b"),
    "datetime": (r"\b(datetime|timedelta|strftime|strptime|calendar|date|time)\b", r"\b(date|dates|datetime|times?|days?|weekday|weeks?|months?|years?|hours?|minutes?|seconds|duration|timestamps?|iso ?8601|leap)\b"),
    "files_io": (r"\b(open|pathlib|Path|csv|os\.walk|shutil|read_text|write_text|glob|json\.(load|dump))\b", r"\b(files?|director(y|ies)|folders?|csv|paths?|lines of|jsonl?)\b"),
    "validation": (r"\b(is_valid|fullmatch|isdigit|isalnum)\b", r"\b(valid|validates?|validation|checks? whether|checks? that|is_\w+|allowed|rules?)\b"),
    "parsing": (r"\b(split|partition|tokens?|parse\w*|int\(|float\()", r"\b(pars(e|es|ing)|tokeni[sz]e|query string|expressions?|versions?|extract|formats?|durations? string|key=value|headers?)\b"),
    "dicts": (r"\b(dict|defaultdict|Counter|\.items\(\)|\.setdefault|\.get\()", r"\b(dicts?|dictionar(y|ies)|mappings?|keys?|nested)\b"),
    "algorithms": (r"\b(memo|heapq|bisect|deque|recurs\w*|while lo|mid)\b", r"\b(sort\w*|search|binary|graph|shortest|dynamic|memo\w*|recursion|primes?|fibonacci|permutations?|subsequence|algorithm|coins?|intervals?|knapsack|topolog\w*|bfs|dfs|paths?)\b"),
    "math": (r"\b(math\.|sum\(|abs\(|round\(|%|\*\*)", r"\b(sum|mean|median|average|factorial|gcd|lcm|numbers?|integers?|digits?|squares?|roots?|modulo|divisible|math|primes?|percent\w*|round\w*)\b"),
    "lists": (r"\b(append|extend|zip|enumerate|sorted)\b|\[\s*\]", r"\b(lists?|arrays?|elements?|items?|chunks?|pairs?|flatten|rotate|window)\b"),
    "strings": (r"\b(join|upper|lower|strip|replace|isalpha)\b", r"\b(strings?|text|words?|characters?|substrings?|letters?|vowels?|case|palindrome|sentence)\b"),
}


class _Keywords:
    """A keyword pattern and the literal strings one of which each of its matches contains
    (read off the pattern's own syntax tree): a text holding none of them has no match, which
    a substring search tells far faster than the regex engine can (most of the twenty
    patterns find nothing in a given example)."""

    def __init__(self, pattern: str, flags: int = 0):
        self.regex = re.compile(pattern, flags)
        self.literals = _required_literals(pattern, flags)

    def count(self, text: str) -> int:
        if self.literals is not None and not any(literal in text for literal in self.literals):
            return 0
        return len(self.regex.findall(text))


def _required_literals(pattern: str, flags: int = 0) -> tuple[str, ...] | None:
    """Strings one of which every match of `pattern` contains, or None when no such set is
    found (then every text is searched). Case-insensitive patterns get None."""
    from re import _constants as sre
    from re import _parser

    def required(items) -> set[str] | None:
        options: list[set[str]] = []  # each: one of these strings is in every match
        run: list[str] = []           # consecutive literal characters

        def end_run():
            if run:
                options.append({"".join(run)})
                run.clear()

        for op, arg in items:
            if op is sre.LITERAL:
                run.append(chr(arg))
                continue
            end_run()
            found = None
            if op is sre.SUBPATTERN and not arg[1] & re.IGNORECASE:
                found = required(arg[-1])
            elif op is sre.ATOMIC_GROUP:
                found = required(arg)
            elif op is sre.BRANCH:
                branches = [required(branch) for branch in arg[1]]
                found = None if None in branches else set().union(*branches)
            elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT) and arg[0] >= 1:
                found = required(arg[2])
            if found:
                options.append(found)
        end_run()
        # the most selective option: its shortest string longest, then the fewest strings
        return max(options, key=lambda o: (min(map(len, o)), -len(o))) if options else None

    if flags & re.IGNORECASE:
        return None
    try:
        found = required(_parser.parse(pattern, flags))
    except Exception:  # a pattern the reader does not know: search every text
        return None
    if not found or "" in found:
        return None
    # a string that holds another member adds nothing: a text holding it holds the member
    return tuple(sorted(x for x in found if not any(y != x and y in x for y in found)))


# Prompt patterns are lower-case and matched against the lower-cased prompt (twice as fast as re.I).
_CATEGORY_RULES = {name: (_Keywords(code, re.M), _Keywords(prompt))
                   for name, (code, prompt) in _CATEGORY_KEYWORDS.items()}


def categorize(prompt: str, code: str) -> str:
    """A task category for an example that arrived without one."""
    prompt = prompt.lower()
    votes = {name: 3 * p.count(prompt) + c.count(code) for name, (c, p) in _CATEGORY_RULES.items()}
    best = max(votes.values())
    return next(name for name, v in votes.items() if v == best) if best else "general"


def balance_limit(sizes: Iterable[int], *, mode: str = "smallest", cap: int | None = None, floor: int = 10) -> int | None:
    """How many examples balancing keeps of each category, given every category's size
    (None: no limit)."""
    limit = None
    if mode == "smallest":
        limit = max(min(sizes, default=0), floor)
    elif mode != "none":
        raise ValueError(f"balance mode must be 'smallest' or 'none', got {mode!r}")
    if cap is not None:
        limit = cap if limit is None else min(limit, cap)
    return limit


def balance_group(c: Candidate) -> str:
    """The category an example is balanced in."""
    return c.category or "uncategorized"


def balance_key(c: Candidate, seed: int = 0) -> tuple:
    """The order in which balancing keeps a category's examples: real ones first, then a
    seeded random order. A mutant takes its origin's place in that order, so where a mutant
    would stand is known before it is made (synthesis makes only those balancing keeps)."""
    return (c.source == "synthetic", hashlib.blake2b(f"{seed}:{c.origin or c.ref}".encode(), digest_size=8).digest(),
            c.ref)


def balance(candidates: list[Candidate], *, mode: str = "smallest", cap: int | None = None,
            floor: int = 10, seed: int = 0) -> tuple[list[Candidate], list[Candidate]]:
    """(kept, dropped): each category down-sampled to the smallest one's size (spec),
    never below `floor`, and to at most `cap` per category when set.

    `mode` "none" applies only the cap. Within a category the first in `balance_key` order
    are kept; the input order is kept.
    """
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        by_category[balance_group(c)].append(i)
    if not by_category:
        return [], []
    limit = balance_limit([len(v) for v in by_category.values()], mode=mode, cap=cap, floor=floor)
    if limit is None:
        return list(candidates), []
    keep: set[int] = set()
    for members in by_category.values():
        keep.update(sorted(members, key=lambda i: balance_key(candidates[i], seed))[:limit])
    return ([c for i, c in enumerate(candidates) if i in keep],
            [c for i, c in enumerate(candidates) if i not in keep])

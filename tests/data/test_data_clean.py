"""Duplicates, evaluation-suite overlap, categories and balance."""

import json
from types import SimpleNamespace

from selftrain.data.clean import Exclusions, NearDuplicateIndex, balance, categorize
from selftrain.data.example import Candidate
from selftrain.data.quality import analyze_code

CODE = ("def running_total(values: list[int]) -> list[int]:\n    \"\"\"Prefix sums.\"\"\"\n    out = []\n"
        "    acc = 0\n    for v in values:\n        acc += v\n        out.append(acc)\n    return out\n")
PROMPT = "Write a Python function `running_total(values)` that returns the prefix sums of a list of integers."


def cand(ref, prompt=PROMPT, code=CODE, origin="", category="math", source="interaction"):
    return Candidate(ref=ref, prompt=prompt, code=code, origin=origin, category=category, source=source,
                     fingerprint=analyze_code(code).fingerprint)


def test_renamed_or_reformatted_copies_are_near_duplicates():
    renamed = CODE.replace("acc", "running").replace("out", "sums").replace('"""Prefix sums."""', '"""Cumulative."""')
    index = NearDuplicateIndex()
    assert index.match(cand("a")) is None
    assert index.match(cand("b", code=renamed)) == "a"
    edited = CODE.replace("return out", "return list(out)")  # a small edit: MinHash finds it
    assert index.match(cand("c", prompt=PROMPT + " ", code=edited)) == "a"


def test_same_code_for_a_different_request_and_mutants_of_one_example_are_kept():
    index = NearDuplicateIndex()
    assert index.match(cand("a")) is None
    assert index.match(cand("b", prompt="Cumulative sums, please: given numbers, give each running sum.")) is None
    assert index.match(cand("a~rename", code=CODE.replace("acc", "running"), origin="a")) is None
    assert index.match(cand("c", code="def other(x):\n    return x * 2\n")) is None


def test_overlap_with_an_evaluation_suite():
    problems = [SimpleNamespace(
        prompt="Write a function `is_leap(year)` that returns True when year is a leap year in the Gregorian calendar.",
        entry_point="is_leap", reference="def is_leap(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n")]
    ex = Exclusions.from_problems(problems)
    assert ex.reason(cand("1", prompt=problems[0].prompt.upper())) == "same prompt"
    assert ex.reason(cand("2", prompt="Please write `is_leap(y)` for me")) == "entry point 'is_leap'"
    para = ("Could you help: returns True when year is a leap year in the Gregorian calendar, "
            "implemented as `check_year(year)`.")
    assert "6-grams" in ex.reason(cand("3", prompt=para))
    copied = problems[0].reference.replace("year", "y")
    assert ex.reason(cand("4", prompt="Write `f(y)` for me", code=copied)) == "code equals a reference solution"
    assert ex.reason(cand("5")) is None


def test_categorize_agrees_with_most_demo_labels():
    from selftrain.cli import DEMO_INTERACTIONS

    rows = [json.loads(line) for line in DEMO_INTERACTIONS.read_text().splitlines()]
    agree = sum(categorize(r["prompt"], r["response"]["code"]) == r["category"] for r in rows)
    assert agree / len(rows) >= 0.6  # 10 categories: chance is 0.1
    assert categorize("Write `f`", "x = 1\n") == "general"


def test_balance_down_samples_to_the_smallest_category_with_a_floor_and_a_cap():
    pool = [cand(f"s{i}", category="strings") for i in range(30)] + \
           [cand(f"m{i}", category="math") for i in range(12)] + \
           [cand(f"x{i}", category="math", source="synthetic") for i in range(3)]
    kept, dropped = balance(pool, mode="smallest", floor=0)
    counts = {c: sum(k.category == c for k in kept) for c in ("strings", "math")}
    assert counts == {"strings": 15, "math": 15} and len(dropped) == 15
    kept, _ = balance(pool, mode="smallest", floor=20)
    assert sum(k.category == "strings" for k in kept) == 20 and sum(k.category == "math" for k in kept) == 15
    kept, _ = balance(pool, mode="none", cap=10)
    math = [k for k in kept if k.category == "math"]
    assert len(math) == 10 and all(k.source != "synthetic" for k in math)  # real examples go first
    assert balance(pool, mode="none") == (pool, [])
    assert balance(pool, mode="smallest", floor=0) == balance(list(pool), mode="smallest", floor=0)  # deterministic


def _jaccard(x: set, y: set) -> float:
    return len(x & y) / len(x | y) if x | y else 1.0


def test_similarity_test_is_exact_jaccard():
    import random

    from selftrain.data.clean import _could_reach, _jaccard_reaches

    rng = random.Random(0)
    for _ in range(2000):
        x = set(rng.sample(range(40), rng.randrange(0, 30)))
        y = set(rng.sample(range(40), rng.randrange(0, 30)))
        for threshold in (0.5, 0.8):
            reaches = _jaccard(x, y) >= threshold
            assert _jaccard_reaches(len(x & y), len(x), len(y), threshold) == reaches, (sorted(x), sorted(y))
            assert _could_reach(len(x), len(y), threshold) or not reaches  # the size bound never rules a match out


def test_common_shingles_are_exact_set_intersections():
    """Code shingles are compared as sorted uint64 arrays, many at once; values at and above
    2**63 sort after the others as unsigned numbers, which the search must respect."""
    import random

    import numpy as np

    from selftrain.data.clean import _common

    rng = random.Random(2)
    pool = [rng.randrange(1 << 64) for _ in range(60)] + [0, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    as_array = lambda values: np.array(sorted(values), dtype=np.uint64)  # noqa: E731
    for _ in range(500):
        mine = set(rng.sample(pool, rng.randrange(0, 40)))
        others = [set(rng.sample(pool, rng.randrange(0, 40))) for _ in range(rng.randrange(1, 6))]
        assert _common(as_array(mine), [as_array(o) for o in others]) == [len(mine & o) for o in others]


def test_the_first_earlier_twin_is_reported_whether_same_program_or_similar_code():
    """Candidates are checked in the order they joined: an example similar in code that joined
    before one that is the same program is the one reported, and the other way round."""
    renamed = CODE.replace("acc", "running").replace("out", "sums")  # the same program
    edited = CODE.replace("return out", "return list(out)")          # another program, similar code
    for first, second in (("similar", "same"), ("same", "similar")):
        index = NearDuplicateIndex()
        for ref in (first, second):  # one family: both join the index
            assert index.match(cand(ref, code=renamed if ref == "same" else edited, origin="family")) is None
        assert index.match(cand("query")) == first


def test_sketches_are_the_same_in_every_process():
    """Worker processes sketch examples for the main process's index: the sketch must not
    depend on the process's string-hash salt."""
    import subprocess
    import sys

    from selftrain.data.clean import sketches

    script = ("import sys; from selftrain.data.clean import sketches; from selftrain.data.example import Candidate; "
              "s = sketches([Candidate(ref='a', prompt=sys.argv[1], code=sys.argv[2])])[0]; "
              "print(s.shingles.hex(), s.signature.hex())")
    here = sketches([cand("a")])[0]
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script, PROMPT, CODE], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout.split()
        assert out == [here.shingles.hex(), here.signature.hex()]


def test_prompt_similarity_on_bit_sets_is_exact_jaccard():
    import random

    from selftrain.data.clean import _jaccard_reaches

    rng = random.Random(1)
    index = NearDuplicateIndex()
    words = [f"w{i}" for i in range(40)]
    for _ in range(2000):
        x = frozenset(rng.sample(words, rng.randrange(0, 30)))
        y = frozenset(rng.sample(words, rng.randrange(0, 30)))
        both = (index._bits(x) & index._bits(y)).bit_count()
        for threshold in (0.5, 0.8):
            assert _jaccard_reaches(both, len(x), len(y), threshold) == (_jaccard(x, y) >= threshold)


def test_shingles_of_code_shorter_than_a_shingle():
    from selftrain.data.clean import _shingles, sketches

    assert len(_shingles("")) == 1 and len(_shingles("x = 1")) == 1
    assert list(_shingles("x = 1")) != list(_shingles("x = 2"))
    assert len(_shingles("x = y + 1 - 2")) == 3  # seven tokens: three 5-grams
    a, b = sketches([Candidate(ref="a", prompt="p", code="pass"), Candidate(ref="b", prompt="p", code="pass")])
    assert a == b


def test_shingles_are_the_distinct_5_gram_hashes_sorted():
    import random
    import zlib

    import numpy as np

    from selftrain.data.clean import _POLY, _TOKEN, _shingles

    rng = random.Random(3)
    words = ["x", "=", "1", "(", ")", "return", "y", "+", "if", ":"]
    for _ in range(300):
        code = " ".join(rng.choice(words) for _ in range(rng.randrange(5, 40)))
        ids = [zlib.crc32(t.encode()) for t in _TOKEN.findall(code)]
        expected = set()
        for i in range(len(ids) - 4):
            h = 0
            for k in range(5):
                h = (h * _POLY + ids[i + k]) % (1 << 64)
            expected.add(h)
        got = _shingles(code)
        assert got.dtype == np.uint64 and got.tolist() == sorted(expected), code


def test_keyword_counts_skip_the_regex_only_where_it_cannot_match():
    """Each category pattern is searched only in texts holding one of its required literals;
    the counts are the regex's own on the demo interactions and the evaluation suites, and on
    random texts for patterns with optional parts, alternatives, repeats and classes."""
    import random
    import re

    from selftrain.cli import DEMO_INTERACTIONS
    from selftrain.data.clean import _CATEGORY_RULES, _Keywords, _required_literals
    from selftrain.evaluation.suites import load_suite

    rows = [json.loads(line) for line in DEMO_INTERACTIONS.read_text().splitlines()]
    problems = [p for name in ("demo", "humaneval") for p in load_suite(name).problems]
    codes = [r["response"]["code"] for r in rows] + [p.prompt + (p.reference or "") for p in problems]
    prompts = [r["prompt"].lower() for r in rows] + [p.prompt.lower() for p in problems]
    for code_rule, prompt_rule in _CATEGORY_RULES.values():
        assert code_rule.literals and prompt_rule.literals  # every rule is prefiltered
        assert all(code_rule.count(t) == len(code_rule.regex.findall(t)) for t in codes)
        assert all(prompt_rule.count(t) == len(prompt_rule.regex.findall(t)) for t in prompts)

    assert _required_literals(r"x?yz") == ("yz",)
    assert _required_literals(r"ab|c*") is None               # an alternative needs nothing
    assert _required_literals(r"abc", re.IGNORECASE) is None  # case-folded: substrings would miss
    assert _required_literals(r"(?i:abc)d") == ("d",)
    assert _required_literals(r"\b(dates?|datetime|time)\b") == ("date", "time")
    rng = random.Random(3)
    patterns = [r"\b(ab|ba)c?\b", r"a(bc)+d|e\s*f", r"(?:xy){2,}|[ab]z", r"q(?=u)u+|\d+k", r"^\s*ab\s", r"(a|b)(c|d)"]
    for pattern in patterns:
        rule = _Keywords(pattern, re.M)
        for _ in range(400):
            text = "".join(rng.choice("abcdefkquxyz 1\n") for _ in range(rng.randrange(0, 30)))
            assert rule.count(text) == len(rule.regex.findall(text)), (pattern, text)


def test_memo_computes_once_and_stays_bounded():
    from selftrain.data.memo import Memo

    calls = []
    memo = Memo(lambda key: calls.append(key) or key * 2, limit=3)
    assert list(map(memo.__getitem__, [1, 2, 1, 3, 2])) == [2, 4, 2, 6, 4] and calls == [1, 2, 3]
    assert memo[4] == 8 and len(memo) <= 3  # full: emptied before the new entry
    assert memo[1] == 2 and calls == [1, 2, 3, 4, 1]

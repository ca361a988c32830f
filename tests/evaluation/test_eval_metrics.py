"""Tests for selftrain.evaluation.metrics: every number checked against a value worked by hand."""

import math
from dataclasses import dataclass
from itertools import combinations

import pytest

from selftrain.evaluation.metrics import (
    aggregate,
    cyclomatic_complexity,
    estimate_complexity,
    maintainability_index,
    pass_at_k,
    sentence_bleu,
    syntax_valid,
    tokenize_code,
)

# --- syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize("code, valid", [
    ("def f():\n    return 1\n", True),
    ("def f(:\n    pass", False),
    ("", False),              # nothing is not a program
    ("   \n\n", False),
    ("x = '\\x00'", True),    # an escaped NUL inside a string is fine...
    ("x = 1\x00", False),     # ...a raw NUL byte in the source is not
])
def test_syntax_valid(code, valid):
    assert syntax_valid(code) is valid


# --- tokenisation and BLEU ------------------------------------------------------------


def test_tokenize_code_is_the_specs_regex_lower_cased():
    assert tokenize_code("def Add(a,b):\n    return a+b  # Sum") == [
        "def", "add", "(", "a", ",", "b", ")", ":", "return", "a", "+", "b", "#", "sum"]
    assert tokenize_code("x_1 >= 2.5") == ["x_1", ">", "=", "2", ".", "5"]


def test_bleu_hand_computed_without_brevity_penalty():
    # candidate a = b + c  vs  reference a = b + d: 5 tokens each, so BP = 1.
    #   1-grams: a = b + match, c does not      -> 4/5
    #   2-grams: (a =) (= b) (b +) match, (+ c) -> 3/4
    #   3-grams: (a = b) (= b +) match           -> 2/3
    #   4-grams: (a = b +) matches               -> 1/2
    #   BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25 = 0.668740
    assert sentence_bleu("a = b + c", "a = b + d") == pytest.approx(0.2 ** 0.25)
    assert sentence_bleu("a = b + c", "a = b + d") == pytest.approx(0.668740, abs=1e-6)


def test_bleu_hand_computed_brevity_penalty():
    # candidate `return a + b` (4 tokens) is a prefix of `return a + b + c` (6 tokens): every
    # precision is 1, and BP = exp(1 - 6/4) = exp(-0.5) = 0.606531.
    assert sentence_bleu("return a + b", "return a + b + c") == pytest.approx(math.exp(-0.5))


def test_bleu_clips_repeated_ngrams():
    # candidate x x x x x against reference x y x y: 1-gram x occurs 2 times in the reference,
    # so only 2 of the 5 candidate x's count; the 2-gram (x x) never occurs -> BLEU 0.
    assert sentence_bleu("x x x x x", "x y x y") == 0.0
    # identical code (case and whitespace aside) scores 1
    assert sentence_bleu("def F(a):\n  return a", "def f(a): return a") == pytest.approx(1.0)


@pytest.mark.parametrize("candidate, reference", [("", "a b c d"), ("a b c d", ""), ("a b c", "a b c")])
def test_bleu_is_zero_without_four_grams(candidate, reference):
    # no smoothing, as nltk's default: a text under 4 tokens has no 4-grams, so p_4 = 0
    assert sentence_bleu(candidate, reference) == 0.0


# --- pass@k ---------------------------------------------------------------------------


def test_pass_at_k_hand_computed():
    # n=5 samples, c=2 correct, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the fraction correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # fewer than k failures: some k-subset of samples always contains a correct one
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0 and pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_is_the_probability_over_k_subsets():
    outcomes = [1, 0, 0, 1, 0, 0, 0]
    for k in range(1, 8):
        subsets = list(combinations(outcomes, k))
        assert pass_at_k(7, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_is_stable_where_binomials_overflow():
    # C(1000, 500) has ~300 digits; the product form never builds it
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(2000, 3, 100) < 1.0


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# --- radon ----------------------------------------------------------------------------

BRANCHY = """
def f(x):
    if x > 0 and x < 10:
        return 1
    for i in range(x):
        pass
    return 0


class C:
    def g(self, y):
        return y if y else 0
"""


def test_cyclomatic_complexity_hand_counted():
    # f: 1 + if + `and` + for = 4; C.g: 1 + conditional expression = 2; module code: 1
    assert cyclomatic_complexity(BRANCHY) == 4
    assert cyclomatic_complexity("x = 1\ny = x + 1\n") == 1
    assert cyclomatic_complexity("def f(:") is None and cyclomatic_complexity("") is None


def test_maintainability_index_hand_computed():
    # def f(a, b): return a + b
    #   Halstead: operators {+} (h1 = 1, N1 = 1), operands {a, b} (h2 = 2, N2 = 2)
    #   V = (N1 + N2) log2(h1 + h2) = 3 log2 3 = 4.754888; G = 1; L = 2 logical lines; 0% comments
    #   MI = (171 - 5.2 ln V - 0.23 G - 16.2 ln L) * 100 / 171
    #      = (171 - 8.107580 - 0.23 - 11.228983) * 100 / 171 = 88.557495
    volume = 3 * math.log2(3)
    expected = (171 - 5.2 * math.log(volume) - 0.23 - 16.2 * math.log(2)) * 100 / 171
    assert maintainability_index("def f(a, b):\n    return a + b\n") == pytest.approx(expected)
    assert expected == pytest.approx(88.557495, abs=1e-6)
    assert maintainability_index("x = 1") == 100.0  # no operators: radon's ceiling
    assert maintainability_index("def f(:") is None


# --- complexity estimate --------------------------------------------------------------


@pytest.mark.parametrize("code, time, space, depth, recursive", [
    ("def f(x):\n    return x + 1\n", "O(1)", "O(1)", 0, False),
    ("def f(a):\n    t = 0\n    for x in a:\n        t += x\n    return t\n", "O(n)", "O(1)", 1, False),
    ("def f(a):\n    return [(x, y) for x in a for y in a]\n", "O(n^2)", "O(n^2)", 2, False),
    ("def f(a):\n    out = []\n    for x in a:\n        out.append(x)\n    return out\n", "O(n)", "O(n)", 1, False),
    ("def f(a):\n    return sorted(a)[0]\n", "O(n log n)", "O(n)", 0, False),
    ("def f(n):\n    c = 0\n    for i in range(n):\n        for j in range(n):\n            while c < j:\n"
     "                c += 1\n    return c\n", "O(n^3)", "O(1)", 3, False),
    # linear recursion: n calls, n frames
    ("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n", "O(n)", "O(n)", 0, True),
    # two calls on one path: exponential...
    ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", "O(2^n)", "O(n)", 0, True),
    # ...unless memoised
    ("import functools\n@functools.lru_cache(None)\ndef fib(n):\n    if n < 2:\n        return n\n"
     "    return fib(n - 1) + fib(n - 2)\n", "O(n)", "O(n)", 0, True),
    # two calls in exclusive branches, halving the range: binary search
    ("def bs(a, x, lo, hi):\n    if lo > hi:\n        return -1\n    mid = (lo + hi) // 2\n    if a[mid] == x:\n"
     "        return mid\n    if a[mid] < x:\n        return bs(a, x, mid + 1, hi)\n    return bs(a, x, lo, mid - 1)\n",
     "O(log n)", "O(log n)", 0, True),
    # two calls on slices: divide and conquer
    ("def ms(a):\n    if len(a) <= 1:\n        return a\n    m = len(a) // 2\n    l, r = ms(a[:m]), ms(a[m:])\n"
     "    out = []\n    while l and r:\n        out.append(l.pop(0) if l[0] < r[0] else r.pop(0))\n"
     "    return out + l + r\n", "O(n log n)", "O(n)", 1, True),
])
def test_estimate_complexity(code, time, space, depth, recursive):
    estimate = estimate_complexity(code)
    assert (estimate.time, estimate.space, estimate.loop_depth, estimate.recursive) == (time, space, depth, recursive)


def test_estimate_complexity_of_nothing_is_nothing():
    assert estimate_complexity("def f(:") is None and estimate_complexity("") is None


# --- aggregate ------------------------------------------------------------------------


@dataclass
class Item:  # just the attributes aggregate reads, so these tests do not depend on the harness
    passed: bool
    tested: bool = True
    n_samples: int = 1
    n_correct: int = 0
    syntax_valid: bool = True
    solution_ran: bool = True
    cyclomatic_complexity: int | None = 1
    maintainability_index: float | None = 100.0
    bleu: float | None = None
    time_complexity: str | None = "O(1)"
    space_complexity: str | None = "O(1)"
    status: str = "passed"
    category: str | None = None


def test_aggregate_hand_computed():
    items = [Item(True, n_samples=4, n_correct=2, bleu=0.5, category="math"),
             Item(False, n_samples=4, n_correct=0, status="failed", cyclomatic_complexity=3, bleu=0.25,
                  maintainability_index=None, category="math"),
             Item(False, n_samples=4, n_correct=4, status="failed", time_complexity="O(n)", category="strings"),
             Item(False, tested=False, syntax_valid=False, solution_ran=False, cyclomatic_complexity=None,
                  time_complexity=None, space_complexity=None, status="untested", bleu=0.0)]
    m = aggregate(items, ks=(1, 2, 10))
    assert (m["n"], m["n_tested"], m["samples_per_item"]) == (4, 3, 4)
    assert m["pass_rate"] == pytest.approx(1 / 3)               # first answers: 1 of the 3 tested
    # pass@1 = mean(2/4, 0/4, 4/4) = 0.5; pass@2 = mean(1 - C(2,2)/C(4,2), 0, 1) = mean(5/6, 0, 1) = 0.61111
    assert m["pass_at_k"] == pytest.approx({"1": 0.5, "2": (5 / 6 + 0 + 1) / 3})  # no pass@10 from 4 samples
    assert m["syntax_rate"] == pytest.approx(0.75) and m["execution_rate"] == pytest.approx(0.75)
    assert m["cyclomatic_complexity"] == pytest.approx(5 / 3)   # (1 + 3 + 1) / 3, the None skipped
    assert m["maintainability_index"] == pytest.approx(100.0)
    assert (m["bleu"], m["n_bleu"]) == (pytest.approx(0.25), 3)
    assert m["time_complexity"] == {"O(1)": 2, "O(n)": 1}
    assert m["status"] == {"passed": 1, "failed": 2, "untested": 1}
    assert m["by_category"] == {"math": {"n": 2, "pass_rate": 0.5}, "strings": {"n": 1, "pass_rate": 0.0}}


def test_aggregate_of_nothing_is_json_safe():
    m = aggregate([])
    assert m["pass_rate"] == 0.0 and m["bleu"] is None and m["pass_at_k"] == {}

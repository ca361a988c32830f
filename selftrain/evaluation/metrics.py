"""What an answer is worth, measured: pure functions of code and outcomes, no I/O.

Per answer: syntax validity, cyclomatic complexity and maintainability index (radon), a static
estimate of time and space complexity, and BLEU against a reference answer with the spec's code
tokenisation. Per problem with n samples of which c passed: pass@k, unbiased (Chen et al. 2021).
Per suite: `aggregate`. Whether a program ran, and whether its tests passed, is the sandbox's
finding (`ExecutionResult.solution_ran`, `.passed`); the harness records both per item.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


# --- syntax and structure -----------------------------------------------------------


def syntax_valid(code: str) -> bool:
    """True when `code` is non-empty and parses as Python."""
    return _parse(code) is not None and bool(code.strip())


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source contains null bytes
        return None


def cyclomatic_complexity(code: str) -> int | None:
    """McCabe's cyclomatic complexity of the most complex block: every function and method,
    and the module's own top-level code, each 1 + its decision points as radon counts them
    (if/elif, loops, except, boolean operators, comprehension conditions, ...). Straight-line
    code is 1; None when the code is empty or does not parse."""
    from radon.visitors import ComplexityVisitor

    if not syntax_valid(code):
        return None
    visitor = ComplexityVisitor.from_code(code)
    blocks = [f.complexity for f in visitor.functions]
    blocks += [m.complexity for c in visitor.classes for m in c.methods]
    return max([visitor.complexity, *blocks])


def maintainability_index(code: str) -> float | None:
    """radon's maintainability index in [0, 100] (higher is easier to maintain):
    max(0, 171 - 5.2 ln V - 0.23 G - 16.2 ln L + 50 sin(sqrt(2.46 rad(C)))) * 100 / 171
    with V the Halstead volume, G the total cyclomatic complexity, L the logical lines and C
    the percentage of comment lines (docstrings included). None when the code is empty or does
    not parse."""
    from radon.metrics import mi_visit

    if not syntax_valid(code):
        return None
    return float(mi_visit(code, multi=True))


# --- static complexity estimate -----------------------------------------------------


@dataclass(frozen=True)
class ComplexityEstimate:
    """A static guess at asymptotic cost, in the input size n. Every loop is assumed to run
    O(n) times, so it is only as good as that assumption: a loop over range(10) still counts."""

    time: str          # "O(1)", "O(n)", "O(n log n)", "O(n^2)", ..., "O(2^n)"
    space: str         # extra memory beyond the input, same notation
    loop_depth: int    # deepest nesting of loops (a comprehension's generators count as loops)
    recursive: bool    # some function calls itself


def estimate_complexity(code: str) -> ComplexityEstimate | None:
    """Estimate time and space complexity from the syntax alone; None for empty or unparsable code.

    Time: a statement inside k nested loops costs n^k; sorted()/.sort() at depth k costs
    n^(k+1) log n. Recursion, counting the calls a function makes to itself along one path
    through its body (the two arms of an if are different paths; a call in a loop counts as
    many): one call shrinking its input by a slice or a division (binary search) adds a
    factor log n, one call otherwise (n-1 style) a factor n; two or more calls are
    divide-and-conquer, at least O(n log n), when they slice or divide, and O(2^n) when they
    do not, unless the function is memoised with functools.cache/lru_cache (then a factor n).
    Space: a comprehension with g generators at depth k builds n^(g+k) items; growing a
    container (append, add, extend, insert, update, item assignment) at depth k keeps n^k;
    sorted(), list(), set(), dict(), tuple() copy n; recursion keeps its depth in frames.
    """
    tree = _parse(code)
    if tree is None or not code.strip():
        return None
    scan = _CostScan()
    scan.visit(tree)
    time = max(scan.time, default=(0, 0))
    space = max(scan.space, default=(0, 0))
    exponential = recursive = False
    for node, memo in scan.functions_seen:
        calls = _self_calls_on_a_path(node.body, node.name)
        if calls == 0:
            continue
        recursive, divides = True, _shrinks_by_division(node)
        if calls >= 2 and not memo and not divides:
            exponential, space = True, max(space, (1, 0))
        elif calls >= 2 and divides:
            time, space = max(time, (1, 1)), max(space, (0, 1))
        elif divides:
            time, space = (time[0], time[1] + 1), max(space, (0, 1))
        else:
            time, space = (time[0] + 1, time[1]), max(space, (1, 0))
    return ComplexityEstimate(time="O(2^n)" if exponential else _big_o(time), space=_big_o(space),
                              loop_depth=scan.max_depth, recursive=recursive)


def _big_o(term: tuple[int, int]) -> str:
    power, logs = term
    parts = [] if power == 0 else ["n" if power == 1 else f"n^{power}"]
    parts += ["log n"] * logs
    return f"O({' '.join(parts) or '1'})"


_GROWERS = {"append", "add", "extend", "insert", "setdefault", "update", "appendleft"}
_COPIERS = {"sorted", "list", "set", "dict", "tuple", "frozenset"}
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


class _CostScan(ast.NodeVisitor):
    """Walks the tree keeping the current loop depth; collects cost terms and functions."""

    def __init__(self):
        self.depth = 0
        self.max_depth = 0
        self.time: list[tuple[int, int]] = []   # (power of n, power of log n)
        self.space: list[tuple[int, int]] = []
        self.functions_seen: list[tuple[ast.AST, bool]] = []  # (def node, memoised)

    def _loop(self, node, extra: int = 1) -> None:
        self.depth += extra
        self.max_depth = max(self.max_depth, self.depth)
        self.time.append((self.depth, 0))
        self.generic_visit(node)
        self.depth -= extra

    visit_For = visit_AsyncFor = visit_While = _loop

    def _comprehension(self, node) -> None:
        generators = len(node.generators)
        if not isinstance(node, ast.GeneratorExp):  # a generator is consumed lazily, not kept
            self.space.append((self.depth + generators, 0))
        self._loop(node, generators)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_FunctionDef(self, node) -> None:
        memo = any(_name(d.func if isinstance(d, ast.Call) else d) in ("cache", "lru_cache")
                   for d in node.decorator_list)
        self.functions_seen.append((node, memo))
        outer, self.depth = self.depth, 0  # a nested def's body runs when called, not per iteration
        self.generic_visit(node)
        self.depth = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node) -> None:
        name = _name(node.func)
        if name in ("sorted", "sort"):
            self.time.append((self.depth + 1, 1))
        if isinstance(node.func, ast.Attribute) and name in _GROWERS:
            self.space.append((self.depth, 0))
        if isinstance(node.func, ast.Name) and name in _COPIERS and node.args:
            self.space.append((self.depth + 1, 0))
        self.generic_visit(node)

    def visit_Assign(self, node) -> None:
        if self.depth and any(isinstance(t, ast.Subscript) for t in node.targets):
            self.space.append((self.depth, 0))
        self.generic_visit(node)


def _is_self_call(node, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (
        isinstance(func, ast.Attribute) and func.attr == name
        and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"))


def _self_calls_in(node, name: str) -> int:
    """Calls to `name` one evaluation of `node` can make (the larger arm of a conditional)."""
    if isinstance(node, _SCOPES):
        return 0
    if isinstance(node, ast.IfExp):
        return _self_calls_in(node.test, name) + max(_self_calls_in(node.body, name),
                                                      _self_calls_in(node.orelse, name))
    own = 1 if _is_self_call(node, name) else 0
    return own + sum(_self_calls_in(child, name) for child in ast.iter_child_nodes(node))


def _self_calls_on_a_path(statements: list, name: str) -> int:
    """The most calls to `name` one run through `statements` can make."""
    ended, through = _paths(statements, name)
    return max(ended or 0, through or 0)


def _paths(statements: list, name: str) -> tuple[int | None, int | None]:
    """(most calls to `name` on a path that returns or raises within `statements`, most on a
    path that falls through their end); None where there is no such path. The arms of an if
    are separate paths, and a call inside a loop counts twice (it may run many times)."""
    ended, through = None, 0
    for statement in statements:
        if through is None:  # everything after an unconditional return is unreachable
            break
        if isinstance(statement, _SCOPES):
            continue
        if isinstance(statement, ast.If):
            test = _self_calls_in(statement.test, name)
            arms = [_paths(statement.body, name), _paths(statement.orelse, name)]
            e, f = _max_plus(test, [a for a, _ in arms]), _max_plus(test, [b for _, b in arms])
        elif isinstance(statement, (ast.Return, ast.Raise)):
            e, f = _self_calls_in(statement, name), None
        elif isinstance(statement, _LOOPS):
            head = statement.test if isinstance(statement, ast.While) else statement.iter
            body_ended, body_through = _paths(statement.body, name)
            inside = 2 * (_self_calls_in(head, name) + max(body_ended or 0, body_through or 0))
            e, f = (inside if body_ended is not None else None), inside
        elif isinstance(statement, (ast.With, ast.AsyncWith, ast.Try)):
            heads = sum(_self_calls_in(item, name) for item in getattr(statement, "items", []))
            e, f = _paths(statement.body + getattr(statement, "finalbody", []), name)
            e, f = _max_plus(heads, [e]), _max_plus(heads, [f])
        else:
            e, f = None, _self_calls_in(statement, name)
        if e is not None:
            ended = max(ended or 0, through + e)
        through = None if f is None else through + f
    return ended, through


def _max_plus(prefix: int, values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return prefix + max(present) if present else None


def _shrinks_by_division(function) -> bool:
    """Some call of the function to itself passes a slice or a quotient (n // 2, lo + hi >> 1),
    directly or through a variable assigned one (mid = (lo + hi) // 2)."""
    def divides(node) -> bool:
        return any(isinstance(n, ast.Slice) or (isinstance(n, ast.BinOp) and isinstance(
            n.op, (ast.FloorDiv, ast.Div, ast.RShift))) for n in ast.walk(node))

    halves = {target.id for node in ast.walk(function) if isinstance(node, ast.Assign) and divides(node.value)
              for target in node.targets if isinstance(target, ast.Name)}
    return any(divides(node) or any(isinstance(n, ast.Name) and n.id in halves for n in ast.walk(node))
               for node in ast.walk(function) if _is_self_call(node, function.name))


def _name(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


# --- similarity to a reference ------------------------------------------------------


def tokenize_code(code: str) -> list[str]:
    """The spec's code tokens: runs of word characters and single other non-space characters,
    lower-cased (`re.findall(r'\\w+|[^\\w\\s]', code)`)."""
    return [token.lower() for token in _TOKEN.findall(code)]


def sentence_bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """BLEU-`max_n` of one candidate against one reference (Papineni et al. 2002), on code tokens.

    exp(sum_n log(p_n) / max_n) * BP, where p_n is the clipped n-gram precision (each candidate
    n-gram counts at most as often as it occurs in the reference) and the brevity penalty
    BP = 1 if c > r else exp(1 - r/c) for candidate and reference lengths c and r. No
    smoothing, as in nltk's default: any p_n of 0 (including a candidate shorter than max_n
    tokens) makes the score 0.
    """
    cand, ref = tokenize_code(candidate), tokenize_code(reference)
    if not cand or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        cand_ngrams = Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
        ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matched = sum(min(count, ref_ngrams[gram]) for gram, count in cand_ngrams.items())
        if matched == 0:
            return 0.0
        log_precision += math.log(matched / sum(cand_ngrams.values())) / max_n
    brevity = 1.0 if len(cand) > len(ref) else math.exp(1.0 - len(ref) / len(cand))
    return brevity * math.exp(log_precision)


# --- pass@k -------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) as in the paper's
    numpy snippet, which never forms the huge binomials."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k samples per problem and k >= 1, got n={n}.")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# --- per suite ----------------------------------------------------------------------


def aggregate(items: Sequence, ks: Sequence[int] = (1, 10, 100)) -> dict:
    """Suite-level figures from item results (anything with ItemResult's attributes).

    pass_rate is the share of tested items whose first answer passed (greedy decoding: its
    only one); pass@k is averaged over tested items for each k no larger than the fewest
    samples any item has. Means skip items where a metric is undefined (unparsable code, no
    reference). Every value is JSON-safe: None, never NaN.
    """
    tested = [i for i in items if i.tested]
    samples = min((i.n_samples for i in tested), default=0)
    counts = {k: [pass_at_k(i.n_samples, i.n_correct, k) for i in tested] for k in ks if 1 <= k <= samples}
    categories: dict[str, list] = {}
    for item in tested:
        categories.setdefault(item.category or "uncategorised", []).append(item)
    return {
        "n": len(items),
        "n_tested": len(tested),
        "pass_rate": _mean([i.passed for i in tested]) or 0.0,
        "syntax_rate": _mean([i.syntax_valid for i in items]) or 0.0,
        "execution_rate": _mean([i.solution_ran for i in items]) or 0.0,
        "samples_per_item": samples,
        "pass_at_k": {str(k): float(np.mean(v)) for k, v in counts.items()},
        "cyclomatic_complexity": _mean([i.cyclomatic_complexity for i in items]),
        "maintainability_index": _mean([i.maintainability_index for i in items]),
        "bleu": _mean([i.bleu for i in items]),
        "n_bleu": sum(i.bleu is not None for i in items),
        "time_complexity": dict(Counter(i.time_complexity for i in items if i.time_complexity)),
        "space_complexity": dict(Counter(i.space_complexity for i in items if i.space_complexity)),
        "status": dict(Counter(i.status for i in items)),
        "by_category": {name: {"n": len(group), "pass_rate": _mean([i.passed for i in group])}
                        for name, group in sorted(categories.items())},
    }


def _mean(values: list) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None

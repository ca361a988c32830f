"""Synthetic examples by AST mutation: the spec's variable renaming, comment addition,
style variation and complexity variation, each meaning-preserving by construction.

Style and complexity rewrites live in `rewrites.py`. Edits are made on the source text at
the positions the syntax tree gives, so comments and formatting the mutation does not touch
survive (`ast.unparse` would drop every comment). An example's code is parsed once for every
mutation tried on it (none changes that tree); each mutant is parsed once and checked:
renaming, comments and quote swaps must give exactly the tree the AST-level edit predicts.
The mutant's tree comes with it (`Mutant`), so curation scores it without parsing it again.
Where an example has tests, a mutant is kept only if `verify(code, tests)` passes (the loop
passes the sandbox).

Renaming is scope-aware: only variables bound inside one function are renamed, never
parameters (callers may pass them by keyword), builtins, imported names, attributes,
keyword arguments, global or nonlocal names, function or class names, names bound in a
nested function or class (shadowing), module-level names, or any name the tests use.
Functions that reach their locals by name (`locals()`, `eval`, `exec`, `vars`) are left
alone.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from selftrain.data.example import Candidate, normalize
from selftrain.data.rewrites import (_SCOPES, Mutant, _lines_edit, checked, children, identifiers,
                                     vary_complexity, vary_style, walk)

MUTATIONS = ("rename", "comments", "style", "complexity")
Verify = Callable[[str, str], bool]

_RESERVED = set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)
_INTROSPECTION = {"locals", "vars", "eval", "exec", "globals"}
_SYNONYMS = {
    "result": "output", "res": "output", "out": "result", "output": "result", "i": "idx", "j": "jdx",
    "k": "key_", "n": "count", "count": "total", "total": "acc", "acc": "total", "s": "text_", "x": "elem",
    "item": "element", "element": "item", "items": "elements", "value": "val", "val": "value",
    "parts": "pieces", "words": "tokens", "line": "row", "lines": "rows", "seen": "visited",
    "stack": "pending", "queue": "pending", "best": "top", "current": "cur", "key": "k_", "ch": "char_",
    "c": "char_", "word": "token", "num": "number", "nums": "numbers", "left": "lo", "right": "hi",
    "lo": "low", "hi": "high", "mid": "middle", "start": "begin", "end": "stop", "data": "payload",
    "path": "location", "match": "found", "m": "found", "d": "mapping", "counts": "tally",
}


# --- renaming ------------------------------------------------------------------------------

_FUNCTIONS = {ast.FunctionDef, ast.AsyncFunctionDef}
_NAMED_BINDERS = {ast.ExceptHandler, ast.MatchAs, ast.MatchStar}  # bind `.name`, not through a Name node


def _scoped_nodes(func: ast.AST):
    """Nodes of `func`'s own scope (comprehensions included), and the nested def/lambda/class nodes."""
    own, nested, todo = [], [], children(func)
    while todo:
        node = todo.pop()
        if node.__class__ in _SCOPES:
            nested.append(node)
            continue
        own.append(node)
        todo.extend(children(node))
    return own, nested


def rename_variables(code: str, rng: random.Random, protected: set[str] = frozenset(),
                     tree: ast.Module | None = None) -> Mutant | None:
    """Rename some function-local variables, or None if none qualify. `tree`: `code`
    already parsed (left unchanged)."""
    tree = tree or ast.parse(code)
    taken = identifiers(code) | _RESERVED | set(protected)
    everything = walk(tree)
    imported = {(a.asname or a.name).split(".")[0] for n in everything
                if n.__class__ in (ast.Import, ast.ImportFrom) for a in n.names}
    module_level = {n.id for n in _scoped_nodes(tree)[0] if n.__class__ is ast.Name and n.ctx.__class__ is ast.Store}
    outside = imported | module_level | set(protected) | _RESERVED
    mapping: dict[str, str] = {}
    edits, renamed_nodes = [], []
    for func in everything:
        if func.__class__ not in _FUNCTIONS:
            continue
        own, nested = _scoped_nodes(func)
        # one pass over the function's own scope: its local stores, every Name node by name,
        # and the names bound other than by a Name node (they would not follow a rename)
        stores, uses, blocked = set(), {}, set()
        for n in own:
            kind = n.__class__
            if kind is ast.Name:
                if n.id in _INTROSPECTION:
                    break  # reaches its locals by name: leave the function alone
                if n.ctx.__class__ is ast.Store:
                    stores.add(n.id)
                uses.setdefault(n.id, []).append(n)
            elif kind is ast.Global or kind is ast.Nonlocal:
                blocked.update(n.names)
            elif kind in _NAMED_BINDERS and n.name:
                blocked.add(n.name)
            elif kind is ast.MatchMapping and n.rest:
                blocked.add(n.rest)
        else:
            if not stores - outside - blocked:
                continue
            blocked |= {a.arg for a in walk(func.args) if a.__class__ is ast.arg}  # parameters
            for inner in nested:  # names a nested scope binds or declares would be shadowed or shared
                for n in walk(inner):
                    kind = n.__class__
                    if kind is ast.Name:
                        if n.ctx.__class__ is not ast.Load:
                            blocked.add(n.id)
                        uses.setdefault(n.id, []).append(n)  # a closure's free variable follows a rename
                    elif kind is ast.arg:
                        blocked.add(n.arg)
                    elif kind is ast.Global or kind is ast.Nonlocal:
                        blocked.update(n.names)
                    elif kind in _FUNCTIONS or kind is ast.ClassDef:
                        blocked.add(n.name)
            local = sorted(stores - outside - blocked)
            if not local:
                continue
            chosen = rng.sample(local, rng.randint(1, len(local)))
            for old in chosen:
                new = _SYNONYMS.get(old, "")
                while not new or new in taken or not new.isidentifier():
                    new = f"{old}_{rng.choice(['v', 'val', 'tmp', 'ref'])}{rng.randint(2, 9)}"
                taken.add(new)
                mapping[f"{func.name}.{old}"] = new
                for n in uses.get(old, ()):
                    edits.append((n.lineno, n.col_offset, n.end_col_offset, new))
                    renamed_nodes.append((n, new))
    if not edits:
        return None
    lines = code.splitlines(keepends=True)
    if any(n.lineno != n.end_lineno or lines[n.lineno - 1].encode()[n.col_offset:n.end_col_offset].decode(
            errors="replace") != n.id for n, _ in renamed_nodes):
        return None  # positions we cannot trust (inside an f-string before 3.12)
    new_code = _lines_edit(code, edits)
    # The edit must give exactly the tree renamed in place: rename, compare, restore.
    olds = [n.id for n, _ in renamed_nodes]
    try:
        for n, new in renamed_nodes:
            n.id = new
        out = checked(new_code, tree)
    finally:
        for (n, _), old in zip(renamed_nodes, olds):
            n.id = old
    return out and out._replace(renames={k.split(".", 1)[1]: v for k, v in mapping.items()})


# --- comments ---------------------------------------------------------------------------

def _short(node: ast.AST, limit: int = 40) -> str | None:
    text = ast.unparse(node)
    return text if len(text) <= limit and "\n" not in text else None


def _describe(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        target, it = _short(stmt.target), _short(stmt.iter)
        return f"Go through each {target} in {it}" if target and it else "Loop over the items"
    if isinstance(stmt, ast.While):
        test = _short(stmt.test)
        return f"Keep going while {test}" if test else "Repeat until the condition fails"
    if isinstance(stmt, ast.If):
        test = _short(stmt.test)
        return f"Handle the case where {test}" if test else "Handle the special case"
    if isinstance(stmt, ast.Return) and stmt.value is not None:
        value = _short(stmt.value, 30)
        return f"Return {value}" if value else "Return the result"
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return "Work inside the context manager so it is closed properly"
    if isinstance(stmt, ast.Try):
        return "Guard against the errors this step can raise"
    return None


_KEYWORDS = {ast.For: "for", ast.AsyncFor: "async", ast.While: "while", ast.If: "if", ast.Return: "return",
             ast.With: "with", ast.AsyncWith: "async", ast.Try: "try"}


def add_comments(code: str, rng: random.Random, most: int = 3, tree: ast.Module | None = None) -> Mutant | None:
    """Insert up to `most` comments above loops, branches and returns that have none.
    `tree`: `code` already parsed (left unchanged)."""
    tree = tree or ast.parse(code)
    lines = code.splitlines()
    spots = []
    for node in walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for stmt in walk(node):
            # the statements _describe has words for (a bare `return` it has none)
            if type(stmt) not in _KEYWORDS or (stmt.__class__ is ast.Return and stmt.value is None):
                continue
            line = lines[stmt.lineno - 1]
            indent = line[:stmt.col_offset]
            previous = lines[stmt.lineno - 2].strip() if stmt.lineno >= 2 else ""
            if indent.strip() or not line[stmt.col_offset:].startswith(_KEYWORDS[type(stmt)]) \
                    or previous.startswith("#") or previous.endswith("\\"):
                continue
            spots.append((stmt.lineno, indent, stmt))
    if not spots:
        return None
    # described only once chosen: _describe unparses expressions
    chosen = sorted(set(rng.sample(spots, min(most, len(spots)))), key=lambda spot: spot[0], reverse=True)
    for lineno, indent, stmt in chosen:
        lines.insert(lineno - 1, f"{indent}# {_describe(stmt)}")
    new_code = "\n".join(lines) + ("\n" if code.endswith("\n") else "")
    return checked(new_code, tree)


# --- the stage ------------------------------------------------------------------------------

def mutate(code: str, mutation: str, rng: random.Random, protected: set[str] = frozenset(),
           tree: ast.Module | None = None) -> Mutant | None:
    """One mutant of `code` by the named mutation (its code, renames and syntax tree); None
    when the mutation does not apply or its result would not parse. `tree`: `code` already
    parsed, shared by every mutation of it (none changes it)."""
    try:
        tree = tree or ast.parse(code)
        if mutation == "rename":
            out = rename_variables(code, rng, protected, tree)
        else:
            out = {"comments": add_comments, "style": vary_style, "complexity": vary_complexity}[mutation](
                code, rng, tree=tree)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return None if out is None or normalize(out.code) == normalize(code) else out


def _rename_in_text(text: str, renames: dict) -> str:
    """Follow renames in an explanation where it quotes code: `name` in backticks."""
    for old, new in renames.items():
        text = text.replace(f"`{old}`", f"`{new}`")
    return text


def mutable(candidates: list[Candidate], per_example: int, verify: Verify | None) -> tuple[list[Candidate], Counter]:
    """The candidates to make mutants of (not mutants themselves; with tests only when there
    is a verifier), and a Counter of the others by reason."""
    rejected: Counter = Counter()
    todo = []
    for c in candidates:
        if per_example <= 0 or c.source == "synthetic":
            continue
        if c.tests and verify is None:
            rejected["has tests but no verifier"] += 1
            continue
        todo.append(c)
    return todo, rejected


def mutants_of(c: Candidate, per_example: int, seed: int = 0,
               mutations: tuple[str, ...] = MUTATIONS) -> tuple[list[tuple[Candidate, ast.Module]], int]:
    """Up to `per_example` mutants of one candidate, each by a different mutation and with
    its syntax tree, and how many could not be made. The candidate's code is parsed once for
    all of them. Each candidate has its own seeded generator, so results do not depend on
    batching or on which process makes them."""
    rng = random.Random(f"{seed}:{c.ref}")
    protected = identifiers(c.tests) | ({c.entry_point} if c.entry_point else set())
    try:
        tree = ast.parse(c.code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [], per_example
    made: list[tuple[Candidate, ast.Module]] = []
    for mutation in rng.sample(mutations, len(mutations)):
        if len(made) >= per_example:
            break
        out = mutate(c.code, mutation, rng, protected, tree)
        if out is None:
            continue
        made.append((Candidate(
            ref=f"{c.ref}~{mutation}", prompt=c.prompt, code=out.code,
            explanation=_rename_in_text(c.explanation, out.renames), category=c.category, target="synthetic",
            source="synthetic", interaction_id=c.interaction_id, entry_point=c.entry_point, tests=c.tests,
            origin=c.ref, mutation=mutation), out.tree))
    return made, per_example - len(made)


def verify_mutants(made: list[Candidate], verify: Verify | None, workers: int = 2) -> tuple[list[Candidate], Counter]:
    """The mutants that pass their tests (`workers` at a time; those without tests pass),
    and a Counter of the others."""
    rejected: Counter = Counter()
    tested = [m for m in made if m.tests]
    if not tested:
        return list(made), rejected
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        verdicts = dict(zip(map(id, tested), pool.map(lambda m: bool(verify(m.code, m.tests)), tested)))
    if failed := sum(not v for v in verdicts.values()):
        rejected["failed its tests"] += failed
    return [m for m in made if not m.tests or verdicts[id(m)]], rejected


def synthesize(candidates: list[Candidate], *, per_example: int = 1, seed: int = 0,
               verify: Verify | None = None, workers: int = 2,
               mutations: tuple[str, ...] = MUTATIONS) -> tuple[list[Candidate], Counter]:
    """Up to `per_example` mutants of each non-synthetic candidate, each by a different
    mutation; (kept mutants, Counter of rejected ones by reason).

    Mutants of an example with tests need `verify`; without one they are not made.
    `workers` mutants are verified at once. (The curation pipeline runs these steps itself,
    in its worker processes.)
    """
    todo, rejected = mutable(candidates, per_example, verify)
    made = []
    for c in todo:
        mutants, missing = mutants_of(c, per_example, seed, mutations)
        made += [m for m, _ in mutants]
        if missing:
            rejected["no applicable mutation"] += missing
    kept, failed = verify_mutants(made, verify, workers)
    return kept, rejected + failed

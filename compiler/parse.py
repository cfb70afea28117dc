"""parse(text, path) -> ast.Spec: the grammar file drives a Lark LALR parser; a Transformer builds nodes.
A hand-written parser of the same grammar builds the same nodes first, about nine times faster; whatever
it does not accept, lark parses again, so that the grammar stays the one definition of the syntax and lark
alone reports syntax errors.

    >>> spec = parse('model encoder = mlp(hidden: [64])', "q.mpt")
    >>> spec.items[0].component.func.dotted
    'mlp'
"""
from __future__ import annotations

import functools
import operator
import re
import sys
from itertools import accumulate, chain, count, repeat
from pathlib import Path

import attrs
from lark import Lark, Token, Transformer, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, v_args
from lark.exceptions import UnexpectedEOF, VisitError

from mptc.compiler import ast
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
        return ast.MetaDecl(self._s(meta), str(c[0]), c[1], c[2], c[3], self._tok(c[0]))

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
_KEYWORDS = ("spec", "data", "model", "head", "meta", "let", "pretrain", "finetune", "auxiliary", "space",
             "meta_objective", "hypergradient", "meta_optimizer", "train", "evaluate")
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
    return "DECL" if token.type == "$END" or str(token) in _KEYWORDS else token.type


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


# ---- the fast path -------------------------------------------------------------------------------
# A tokenizer and a recursive-descent parser of grammar/mpt.lark that build what lark and _Build build,
# spans included. They accept only what the grammar accepts, and bail out (_Bail) on anything else: a
# syntax error, nesting lark would report, a number int() refuses. Lark's contextual lexer reads a word as
# a keyword only in a parser state that accepts the keyword, so this parser reads a keyword only where the
# grammar has one and any word where it has a NAME. The LALR states that accept both a name and keywords
# are those after a `train` option, where a declaration keyword ends the declaration: so here too.
class _Bail(Exception):
    """The fast parser does not accept the text: lark parses it, and reports the error if there is one."""


_TOKEN = re.compile(r"""
    ((?:[ \t\f\r\n]+|\#[^\n]*)*+)                        # blanks and comments (WS, COMMENT), then
    ([A-Za-z_][A-Za-z0-9_]*                               # NAME, keywords included
    |(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?  # NUMBER; an INT is a NUMBER of digits alone
    |"(?:[^"\\\n]|\\.)*"                                  # STRING
    |\*\*|==|!=|[-=:,\[\](){}.+*/]                        # punctuation, the longest first
    |.                                                    # a character that starts no token
    |)                                                    # the end of the text, as ''
    """, re.VERBOSE)
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIGITS = frozenset("0123456789")


def _tokens(text: str) -> tuple[list[str], list[int], list[int], list[int]]:
    """The tokens' texts, ending with '', and each token's line, column and end column (lark's: 1-based,
    the end exclusive; no token spans lines), all computed by C loops: the `line_at` each offset of the
    text, and the offset `before` each line's first."""
    pairs = _TOKEN.findall(text)
    texts = list(map(operator.itemgetter(1), pairs))
    starts = list(accumulate(map(len, chain.from_iterable(pairs))))[::2]
    widths = list(map((1).__add__, map(len, text.split("\n"))))  # each line's, with its newline
    line_at = list(chain.from_iterable(map(repeat, count(1), widths)))
    before = [0, *accumulate(widths, initial=-1)]
    lines = list(map(line_at.__getitem__, starts))
    cols = list(map(operator.sub, starts, map(before.__getitem__, lines)))
    return texts, lines, cols, list(map(operator.add, cols, map(len, texts)))


def _is_number(text: str) -> bool:
    """A NUMBER token (the tokenizer's texts only: a bad character is a text of its own)."""
    return text[:1] in _DIGITS or text[:1] == "." and len(text) > 1


def _is_string(text: str) -> bool:
    return text[:1] == '"' and len(text) > 1


def _value(text: str):
    """A NUMBER token's value, as _Build converts it; bails where int() refuses (lark reports it)."""
    try:
        return _number(text)
    except ValueError:
        raise _Bail from None


_OWN_TREE = ("split", "bounds")  # the tuple fields that lark builds a tree for, one level deeper


def _deepest(node, depth: int) -> int:
    """How deep lark's tree for `node` reaches, its root at `depth`, as _too_deep counts: a level per node,
    and one for a data split or a meta-parameter's bounds. Exact for expressions, the only nodes that nest
    deep (a name list counts as deep as lark's tree for it, an `a == b` name one level deeper)."""
    deepest, stack = depth, [(node, depth)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        for field in attrs.fields(type(node)):
            value = getattr(node, field.name)
            if isinstance(value, tuple):
                below = depth + 1 + (field.name in _OWN_TREE)
                stack.extend((v, below) for v in value if attrs.has(type(v)))
            elif attrs.has(type(value)) and not isinstance(value, Span):
                stack.append((value, depth + 1))
    return deepest


def _keyword_clause(node, part):
    """The parser of a stage clause `KEYWORD part` (loss expr, optimizer call, ...): node(span, part)."""
    def build(self):
        i = self._take(self.t[self.i])
        value = part(self)
        return node(self._span_to(i, value), value)
    return build


class _Fast:
    """The recursive-descent parser: a method per rule of grammar/mpt.lark, each building what _Build does.

    `self.i` is the next token. A node's span runs from its rule's first token or subtree to its last, as
    lark's propagate_positions has it. `( expr )` is the expression itself, whose span leaves the
    parentheses out; a subtree's span as its parent counts it (lark's "container") takes them in:
    `(a) * b` starts at `(`, `a` at `a`. `self.outer` holds those of the parenthesised nodes, by id.
    """

    def __init__(self, text: str, path: str):
        self.path = path
        self.t, self.line, self.col, self.end = _tokens(text)
        self.i = 0
        self.outer: dict[int, Span] = {}

    # spans and tokens
    def _span(self, i: int, j: int) -> Span:
        """From the start of token i to the end of token j."""
        return Span(self.path, self.line[i], self.col[i], self.line[j], self.end[j])

    def _extent(self, node) -> Span:
        """The node's span with the parentheses around it, if any."""
        return self.outer.get(id(node), node.span) if self.outer else node.span

    def _span_to(self, i: int, node) -> Span:
        """From the start of token i to the end of a subtree."""
        last = self._extent(node)
        return Span(self.path, self.line[i], self.col[i], last.end_line, last.end_col)

    def _span_from(self, node, j: int) -> Span:
        """From the start of a subtree to the end of token j."""
        first = self._extent(node)
        return Span(self.path, first.line, first.col, self.line[j], self.end[j])

    def _binop(self, op: str, left, right) -> ast.BinOp:
        """left op right, for op in + - * / **; its span from the extent of one to the other's."""
        first, last = left.span, right.span
        if self.outer:  # _extent, inlined on the hottest path
            first, last = self.outer.get(id(left), first), self.outer.get(id(right), last)
        return ast.BinOp(Span(self.path, first.line, first.col, last.end_line, last.end_col), op, left, right)

    def _take(self, text: str) -> int:
        """Consumes the keyword or punctuation `text`; its index."""
        i = self.i
        if self.t[i] != text:
            raise _Bail
        self.i = i + 1
        return i

    def _name(self) -> int:
        """Consumes a NAME, any word (lark reads no keyword where a name may come); its index."""
        i = self.i
        if self.t[i][:1] not in _NAME_START:
            raise _Bail
        self.i = i + 1
        return i

    def _int(self) -> tuple[int, int]:
        """Consumes an INT; its value and index. A NUMBER with a point or an exponent is no INT: lark reads
        its digits as one and fails on the rest."""
        i = self.i
        text = self.t[i]
        if not (text.isascii() and text.isdigit()):
            raise _Bail
        self.i = i + 1
        return _value(text), i

    def _ident(self) -> ast.Ident:
        i = self._name()
        return ast.Ident(self._span(i, i), self.t[i])

    def _name_list(self) -> tuple[ast.Ident, ...]:
        """name_list: NAME ("," NAME)*"""
        names = [self._ident()]
        while self.t[self.i] == ",":
            self.i += 1
            names.append(self._ident())
        return tuple(names)

    # expressions
    def expression(self):
        """The `expr` start: an expression, then the end of the text."""
        node = self._expr()
        if self.t[self.i] or self.i > MAX_NESTING and _deepest(node, 0) > MAX_NESTING:
            raise _Bail
        return node

    def _expr(self, depth: int = 0):
        """sum: sum ("+" | "-") product | product; product: product ("*" | "/") unary | unary. Both are
        left-associative loops here, a product's inside a sum's. `depth` counts the nesting of the
        recursion, which bails beyond MAX_NESTING: lark's tree is then too deep too, unless the levels are
        parentheses (lark accepts those, and parses the text)."""
        t = self.t
        left = self._unary(depth)
        while True:
            op = t[self.i]
            if op == "*" or op == "/":
                self.i += 1
                right = self._unary(depth)
            elif op == "+" or op == "-":
                self.i += 1
                right = self._unary(depth)
                while t[self.i] == "*" or t[self.i] == "/":
                    times = t[self.i]
                    self.i += 1
                    factor = self._unary(depth)
                    right = self._binop(times, right, factor)
            else:
                return left
            left = self._binop(op, left, right)

    def _unary(self, depth: int):
        """unary: "-" unary | postfix ["**" unary]; postfix: atom ("[" expr "]")*;
        atom: NUMBER | STRING | ref | call | "[" [expr ("," expr)*] "]" | "(" expr ")"."""
        if depth > MAX_NESTING:
            raise _Bail
        t, i = self.t, self.i
        text = t[i]
        if text[:1] in _NAME_START:
            if t[i + 1] == ".":
                node = self._ref()
            else:
                self.i = i + 1
                node = ast.Ref(Span(self.path, self.line[i], self.col[i], self.line[i], self.end[i]), (text,))
            if t[self.i] == "(":
                node = self._call_args(node, depth)
        elif _is_number(text):
            self.i = i + 1
            node = ast.Number(Span(self.path, self.line[i], self.col[i], self.line[i], self.end[i]), _value(text),
                              text)
        elif text == "-":
            self.i = i + 1
            operand = self._unary(depth + 1)
            return ast.Neg(self._span_to(i, operand), operand)
        elif text == "(":
            self.i = i + 1
            node = self._expr(depth + 1)
            self.outer[id(node)] = self._span(i, self._take(")"))
        elif text == "[":
            self.i = i + 1
            items = []
            if t[self.i] != "]":
                items.append(self._expr(depth + 1))
                while t[self.i] == ",":
                    self.i += 1
                    items.append(self._expr(depth + 1))
            node = ast.ListExpr(self._span(i, self._take("]")), tuple(items))
        elif _is_string(text):
            self.i = i + 1
            node = ast.String(self._span(i, i), _unquote(text))
        else:
            raise _Bail
        while t[self.i] == "[":
            self.i += 1
            index = self._expr(depth + 1)
            node = ast.Index(self._span_from(node, self._take("]")), node, index)
        if t[self.i] == "**":
            self.i += 1
            right = self._unary(depth + 1)
            node = self._binop("**", node, right)
        return node

    def _ref(self) -> ast.Ref:
        """ref: NAME ("." NAME)*"""
        first = last = self._name()
        t, parts = self.t, [self.t[first]]
        while t[self.i] == ".":
            self.i += 1
            last = self._name()
            parts.append(t[last])
        return ast.Ref(self._span(first, last), tuple(parts))

    def _call(self) -> ast.Call:
        """call: ref "(" [arg ("," arg)*] ")" (a declaration's, at depth 0)"""
        func = self._ref()
        if self.t[self.i] != "(":
            raise _Bail
        return self._call_args(func, 0)

    def _call_args(self, func: ast.Ref, depth: int) -> ast.Call:
        """A call after its function, at "("; arg: NAME ":" expr -> kwarg | expr."""
        t, args, kwargs = self.t, [], []
        self.i += 1
        while t[self.i] != ")":
            if args or kwargs:
                self._take(",")
            i = self.i
            if t[i][:1] in _NAME_START and t[i + 1] == ":":
                self.i = i + 2
                value = self._expr(depth + 1)
                kwargs.append(ast.Kwarg(self._span_to(i, value), t[i], value))
            else:
                args.append(self._expr(depth + 1))
        end = self.i
        self.i = end + 1
        return ast.Call(self._span_from(func, end), func, tuple(args), tuple(kwargs))

    # declarations
    def spec(self) -> ast.Spec:
        """The `start` start: start: item*. An item of more tokens than MAX_NESTING may nest deeper (each
        level of lark's tree has a token of its own), so its depth is measured."""
        t, items = self.t, []
        while t[self.i]:
            first = self.i
            build = self._ITEMS.get(t[first])
            if build is None:
                raise _Bail
            item = build(self)
            if self.i - first > MAX_NESTING and _deepest(item, 1) > MAX_NESTING:
                raise _Bail
            items.append(item)
        if not items:
            return ast.Spec(Span(self.path, 1, 1, 1, 1), ())
        first, last = items[0].span, items[-1].span
        return ast.Spec(Span(self.path, first.line, first.col, last.end_line, last.end_col), tuple(items))

    def _spec_decl(self) -> ast.SpecHeader:
        """spec_decl: "spec" NAME [STRING]"""
        i, name = self._take("spec"), self._name()
        last, doc = name, None
        if _is_string(self.t[self.i]):
            last = self.i
            self.i += 1
            doc = _unquote(self.t[last])
        return ast.SpecHeader(self._span(i, last), self.t[name], doc)

    def _data_decl(self) -> ast.DataDecl:
        """data_decl: "data" NAME "=" call [split]; split: "split" split_part ("," split_part)*"""
        i, name, _ = self._take("data"), self._name(), self._take("=")
        source, split = self._call(), []
        if self.t[self.i] == "split":
            self.i += 1
            split.append(self._split_part())
            while self.t[self.i] == ",":
                self.i += 1
                split.append(self._split_part())
        last = split[-1] if split else source
        return ast.DataDecl(self._span_to(i, last), self.t[name], source, tuple(split), self._span(name, name))

    def _split_part(self) -> ast.SplitPart:
        """split_part: NAME expr"""
        name = self._name()
        fraction = self._expr()
        return ast.SplitPart(self._span_to(name, fraction), self.t[name], fraction)

    def _model_decl(self) -> ast.ModelDecl:
        """model_decl: "model" NAME "=" call"""
        i, name, _ = self._take("model"), self._name(), self._take("=")
        component = self._call()
        return ast.ModelDecl(self._span_to(i, component), self.t[name], component, self._span(name, name))

    def _head_decl(self) -> ast.HeadDecl:
        """head_decl: "head" NAME "=" call"""
        i, name, _ = self._take("head"), self._name(), self._take("=")
        component = self._call()
        return ast.HeadDecl(self._span_to(i, component), self.t[name], component, self._span(name, name))

    def _meta_decl(self) -> ast.MetaDecl:
        """meta_decl: "meta" NAME ":" meta_type ["=" expr] [bounds]; bounds: "in" "[" expr "," expr "]" """
        i, name, _ = self._take("meta"), self._name(), self._take(":")
        type_ = self._meta_type()
        span = self._span_to(i, type_)
        init = bounds = None
        if self.t[self.i] == "=":
            self.i += 1
            init = self._expr()
            span = self._span_to(i, init)
        if self.t[self.i] == "in":
            self.i += 1
            self._take("[")
            low = self._expr()
            self._take(",")
            bounds = (low, self._expr())
            span = self._span(i, self._take("]"))
        return ast.MetaDecl(span, self.t[name], type_, init, bounds, self._span(name, name))

    def _meta_type(self):
        """meta_type: "scalar" | "vector" "[" INT "]" | "network" call | "factored" "(" NAME ")" """
        i = self.i
        word = self.t[i]
        self.i = i + 1
        if word == "scalar":
            return ast.ScalarType(self._span(i, i))
        if word == "vector":
            self._take("[")
            length = self._int()[0]
            return ast.VectorType(self._span(i, self._take("]")), length)
        if word == "network":
            component = self._call()
            return ast.NetworkType(self._span_to(i, component), component)
        if word == "factored":
            self._take("(")
            space = self.t[self._name()]
            return ast.FactoredType(self._span(i, self._take(")")), space)
        raise _Bail

    def _let_decl(self) -> ast.LetDecl:
        """let_decl: "let" NAME "=" expr"""
        i, name, _ = self._take("let"), self._name(), self._take("=")
        value = self._expr()
        return ast.LetDecl(self._span_to(i, value), self.t[name], value, self._span(name, name))

    # stages
    def _stage(self) -> ast.Stage:
        """pretrain_block: "pretrain" "{" clause* "}", and so finetune_block; auxiliary_block has a NAME."""
        i = self.i
        kind = self.t[i]
        self.i = i + 1
        name = self.t[self._name()] if kind == "auxiliary" else None
        self._take("{")
        clauses = []
        while self.t[self.i] != "}":
            build = self._CLAUSES.get(self.t[self.i])
            if build is None:
                raise _Bail
            clauses.append(build(self))
        return ast.Stage(self._span(i, self._take("}")), kind, name, tuple(clauses))

    def _data_clause(self) -> ast.DataClause:
        """"data" ref ["batch" INT]"""
        i, ref = self._take("data"), self._ref()
        if self.t[self.i] != "batch":
            return ast.DataClause(self._span_to(i, ref), ref, None)
        self.i += 1
        batch, j = self._int()
        return ast.DataClause(self._span(i, j), ref, batch)

    def _steps_clause(self) -> ast.StepsClause:
        """"steps" INT"""
        i, (n, j) = self._take("steps"), self._int()
        return ast.StepsClause(self._span(i, j), n)

    def _unroll_clause(self) -> ast.UnrollClause:
        """"unroll" INT ["update" name_list]"""
        i, (k, j) = self._take("unroll"), self._int()
        if self.t[self.i] != "update":
            return ast.UnrollClause(self._span(i, j), k, ())
        self.i += 1
        update = self._name_list()
        return ast.UnrollClause(self._span_to(i, update[-1]), k, update)

    def _sample_clause(self) -> ast.SampleClause:
        """"sample" INT "per" "step" """
        i, (n, _) = self._take("sample"), self._int()
        self._take("per")
        return ast.SampleClause(self._span(i, self._take("step")), n)

    # spaces
    def _space_decl(self) -> ast.SpaceDecl:
        """space_decl: "space" NAME "=" factor ("x" factor)* exclude*"""
        i, name, _ = self._take("space"), self._name(), self._take("=")
        factors, excludes = [self._factor()], []
        while self.t[self.i] == "x":
            self.i += 1
            factors.append(self._factor())
        while self.t[self.i] == "exclude":
            excludes.append(self._exclude())
        return ast.SpaceDecl(self._span_to(i, (excludes or factors)[-1]), self.t[name], tuple(factors),
                             tuple(excludes), self._span(name, name))

    def _factor(self) -> ast.Factor:
        """factor: NAME "{" name_list "}" """
        name, _ = self._name(), self._take("{")
        choices = self._name_list()
        return ast.Factor(self._span(name, self._take("}")), self.t[name], choices)

    def _exclude(self) -> ast.Exclude:
        """exclude: "exclude" condition ("and" condition)*"""
        i, conditions = self._take("exclude"), [self._condition()]
        while self.t[self.i] == "and":
            self.i += 1
            conditions.append(self._condition())
        return ast.Exclude(self._span_to(i, conditions[-1]), tuple(conditions))

    def _condition(self) -> ast.Condition:
        """condition: NAME "in" "{" name_list "}" | NAME "==" NAME | NAME "!=" NAME"""
        name = self._name()
        op = self.t[self.i]
        self.i += 1
        if op == "in":
            self._take("{")
            values = self._name_list()
            return ast.Condition(self._span(name, self._take("}")), self.t[name], "in", values)
        if op in ("==", "!="):
            value = self._ident()
            return ast.Condition(self._span_to(name, value), self.t[name], op, (value,))
        raise _Bail

    # the meta level
    def _objective_decl(self) -> ast.ObjectiveDecl:
        """objective_decl: "meta_objective" expr "on" ref"""
        i, expr, _ = self._take("meta_objective"), self._expr(), self._take("on")
        on = self._ref()
        return ast.ObjectiveDecl(self._span_to(i, on), expr, on)

    def _hypergradient_decl(self) -> ast.HypergradientDecl:
        """hypergradient_decl: "hypergradient" hg_entry ("," hg_entry)* [hg_check];
        hg_check: "check" "every" INT"""
        i, entries = self._take("hypergradient"), [self._hg_entry()]
        while self.t[self.i] == ",":
            self.i += 1
            entries.append(self._hg_entry())
        if self.t[self.i] != "check":
            return ast.HypergradientDecl(self._span_to(i, entries[-1]), tuple(entries), None)
        self.i += 1
        self._take("every")
        every, j = self._int()
        return ast.HypergradientDecl(self._span(i, j), tuple(entries), every)

    def _hg_entry(self) -> ast.HgEntry:
        """hg_entry: NAME ":" expr"""
        name, _ = self._name(), self._take(":")
        estimator = self._expr()
        return ast.HgEntry(self._span_to(name, estimator), self.t[name], estimator)

    def _meta_optimizer_decl(self) -> ast.MetaOptimizerDecl:
        """meta_optimizer_decl: "meta_optimizer" call"""
        i, call = self._take("meta_optimizer"), self._call()
        return ast.MetaOptimizerDecl(self._span_to(i, call), call)

    def _train_decl(self) -> ast.TrainDecl:
        """train_decl: "train" option+ -- an option's name may be any word but a declaration keyword."""
        i, options = self._take("train"), [self._option()]
        t = self.t
        while t[self.i][:1] in _NAME_START and t[self.i] not in self._ITEMS:
            options.append(self._option())
        return ast.TrainDecl(self._span_to(i, options[-1]), tuple(options))

    def _option(self) -> ast.Option:
        """option: NAME value; value: NUMBER -> number | "-" NUMBER -> neg_number | NAME -> symbol | STRING"""
        name = self._name()
        i = self.i
        text = self.t[i]
        self.i = i + 1
        if _is_number(text):
            value = ast.Number(self._span(i, i), _value(text), text)
        elif text == "-" and _is_number(self.t[i + 1]):
            self.i = i + 2
            digits = self.t[i + 1]
            value = ast.Number(self._span(i, i + 1), -_value(digits), "-" + digits)
        elif text[:1] in _NAME_START:
            value = ast.Ref(self._span(i, i), (text,))
        elif _is_string(text):
            value = ast.String(self._span(i, i), _unquote(text))
        else:
            raise _Bail
        return ast.Option(self._span_to(name, value), self.t[name], value)

    def _evaluate_decl(self) -> ast.EvaluateDecl:
        """evaluate_decl: "evaluate" call ["against" name_list]"""
        i, call = self._take("evaluate"), self._call()
        if self.t[self.i] != "against":
            return ast.EvaluateDecl(self._span_to(i, call), call, ())
        self.i += 1
        against = self._name_list()
        return ast.EvaluateDecl(self._span_to(i, against[-1]), call, against)

    _ITEMS = {"spec": _spec_decl, "data": _data_decl, "model": _model_decl, "head": _head_decl,
              "meta": _meta_decl, "let": _let_decl, "pretrain": _stage, "finetune": _stage, "auxiliary": _stage,
              "space": _space_decl, "meta_objective": _objective_decl, "hypergradient": _hypergradient_decl,
              "meta_optimizer": _meta_optimizer_decl, "train": _train_decl, "evaluate": _evaluate_decl}
    _CLAUSES = {"data": _data_clause, "loss": _keyword_clause(ast.LossClause, _expr),
                "optimizer": _keyword_clause(ast.OptimizerClause, _call), "steps": _steps_clause,
                "unroll": _unroll_clause, "augment": _keyword_clause(ast.AugmentClause, _call),
                "sample": _sample_clause, "weights": _keyword_clause(ast.WeightsClause, _expr),
                "end_task_weight": _keyword_clause(ast.EndTaskWeightClause, _expr)}


def _fast_parse(text: str, path: str = "<spec>", start: str = "start"):
    """The fast path: what parse returns, or _Bail where it does not accept the text."""
    if start == "start":
        return _Fast(text, path).spec()
    if start == "expr":
        return _Fast(text, path).expression()
    raise _Bail


def parse(text: str, path: str = "<spec>", start: str = "start"):
    """Parses .mpt text into an ast.Spec (or an expression with start="expr"); raises SyntaxProblem.
    The fast path first; lark where it bails, for the error (or, should the fast path miss a valid
    construct, the result)."""
    try:
        return _fast_parse(text, path, start)
    except _Bail:
        return _lark_parse(text, path, start)

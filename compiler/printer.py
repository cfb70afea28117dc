"""The printer: an AST back to canonical .mpt text, the source's comments re-attached (`mptc fmt`).

Canonical layout: one declaration or clause per line, a block's clauses indented by two spaces, a space's
`exclude` rules (and, when it is long, its factors) on continuation lines, single spaces around binary
operators and after commas, the fewest parentheses the grammar's precedence allows, numbers in their own
spelling. The AST holds no comments, so `format_text` reads them from the source and keeps every one: a
full-line comment stays above the line it preceded, an end-of-line comment stays at the end of its line
(two spaces before `#`), and a comment from inside a declaration that now fits one line moves above it.
Blank lines between lines survive, runs of them collapse to one.

    >>> from mptc.compiler.parse import parse
    >>> print_expr(parse("(a*b)+c - (d - e)", "<t>", start="expr"))
    'a * b + c - (d - e)'
    >>> format_text("let  a=(2*b)   # why\\n")
    'let a = 2 * b  # why\\n'
"""
from __future__ import annotations

import bisect
import math
import re

import attrs

from mptc.compiler import ast
from mptc.compiler.parse import parse

INDENT = "  "
WIDTH = 100  # a space declaration longer than this puts each factor on its own line

# The grammar's expression levels, loosest first: a node printed where a tighter level is required gets
# parentheses (the grammar's `?atom: "(" expr ")"`).
EXPR, SUM, PRODUCT, UNARY, POWER, POSTFIX, ATOM = range(7)
# op -> (its level, the least level of its left operand, of its right operand): + - * / associate to the
# left, ** to the right and binds tighter than a unary minus on its left (`-a ** 2` is `-(a ** 2)`).
_BINARY = {"+": (SUM, SUM, PRODUCT), "-": (SUM, SUM, PRODUCT), "*": (PRODUCT, PRODUCT, UNARY),
           "/": (PRODUCT, PRODUCT, UNARY), "**": (POWER, POSTFIX, UNARY)}
_NUMBER = re.compile(r"([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")  # grammar/mpt.lark's NUMBER
_ESCAPE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}  # what parse._unquote decodes


# ---- expressions ---------------------------------------------------------------------------------
def _level(e) -> int:
    if isinstance(e, ast.BinOp):
        return _BINARY[e.op][0]
    if isinstance(e, ast.Neg) or isinstance(e, ast.Number) and e.text.startswith("-"):
        return UNARY
    return POSTFIX if isinstance(e, ast.Index) else ATOM


def _number_text(text: str):
    """The value the parser gives a NUMBER spelling (with the sign a `train` option may carry), or None."""
    digits = text.removeprefix("-")
    if not _NUMBER.fullmatch(digits):
        return None
    try:
        value = int(digits) if digits.isdigit() else float(digits)
    except ValueError:  # more digits than int() converts
        return None
    return -value if text.startswith("-") else value


def spell_number(value) -> str:
    """A spelling of a number that parses back to it (inf as 1e999: the parser reads overflow as inf).

    >>> spell_number(1e-05), spell_number(3), spell_number(-float("inf"))
    ('1e-05', '3', '-1e999')
    """
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN has no .mpt spelling")
    sign = "-" if value < 0 or (isinstance(value, float) and math.copysign(1, value) < 0 and value == 0) else ""
    magnitude = abs(value)
    if isinstance(value, float):
        return sign + ("1e999" if math.isinf(magnitude) else repr(magnitude))
    return sign + str(magnitude)


class _Printer:
    """One `_print_<Node>` per AST node type; each returns the node's text (lines joined by newlines)."""

    def visit(self, node) -> str:
        method = getattr(self, f"_print_{type(node).__name__}", None)
        if method is None:
            raise TypeError(f"the printer has no rule for {type(node).__name__}")
        return method(node)

    def operand(self, e, least: int) -> str:
        """`e` as an operand that must be at least `least` tight, parenthesised when it is looser."""
        text = self.visit(e)
        return f"({text})" if _level(e) < least else text

    def joined(self, nodes, sep=", ") -> str:
        return sep.join(self.visit(n) for n in nodes)

    # expressions
    def _print_Number(self, e: ast.Number) -> str:
        value = _number_text(e.text)
        same = value is not None and type(value) is type(e.value) and value == e.value
        return e.text if same else spell_number(e.value)

    def _print_String(self, e: ast.String) -> str:
        return '"' + "".join(_ESCAPE.get(ch, ch) for ch in e.value) + '"'

    def _print_Ref(self, e: ast.Ref) -> str:
        return e.dotted

    def _print_Kwarg(self, e: ast.Kwarg) -> str:
        return f"{e.name}: {self.visit(e.value)}"

    def _print_Call(self, e: ast.Call) -> str:
        return f"{self.visit(e.func)}({self.joined(e.args + e.kwargs)})"

    def _print_BinOp(self, e: ast.BinOp) -> str:
        _, left, right = _BINARY[e.op]
        return f"{self.operand(e.left, left)} {e.op} {self.operand(e.right, right)}"

    def _print_Neg(self, e: ast.Neg) -> str:
        return "-" + self.operand(e.operand, UNARY)

    def _print_Index(self, e: ast.Index) -> str:
        return f"{self.operand(e.target, POSTFIX)}[{self.visit(e.index)}]"

    def _print_ListExpr(self, e: ast.ListExpr) -> str:
        return f"[{self.joined(e.items)}]"

    def _print_Ident(self, e: ast.Ident) -> str:
        return e.name

    # declarations
    def _print_SpecHeader(self, d: ast.SpecHeader) -> str:
        return f"spec {d.name}" + ("" if d.doc is None else " " + self._print_String(ast.String(d.span, d.doc)))

    def _print_ImportDecl(self, d: ast.ImportDecl) -> str:
        return f"import {self.visit(d.source)}"

    def _print_SplitPart(self, d: ast.SplitPart) -> str:
        return f"{d.name} {self.visit(d.fraction)}"

    def _print_DataDecl(self, d: ast.DataDecl) -> str:
        split = f" split {self.joined(d.split)}" if d.split else ""
        return f"data {d.name} = {self.visit(d.source)}{split}"

    def _print_ModelDecl(self, d: ast.ModelDecl) -> str:
        return f"model {d.name} = {self.visit(d.component)}"

    def _print_HeadDecl(self, d: ast.HeadDecl) -> str:
        return f"head {d.name} = {self.visit(d.component)}"

    def _print_ScalarType(self, t: ast.ScalarType) -> str:
        return "scalar"

    def _print_VectorType(self, t: ast.VectorType) -> str:
        return f"vector[{t.length}]"

    def _print_NetworkType(self, t: ast.NetworkType) -> str:
        return f"network {self.visit(t.component)}"

    def _print_FactoredType(self, t: ast.FactoredType) -> str:
        return f"factored({t.space})"

    def _print_MetaDecl(self, d: ast.MetaDecl) -> str:
        init = "" if d.init is None else f" = {self.visit(d.init)}"
        bounds = "" if d.bounds is None else f" in [{self.joined(d.bounds)}]"
        rate = "" if d.rate is None else f" rate {self.visit(d.rate)}"
        return f"meta {d.name}: {self.visit(d.type)}{init}{bounds}{rate}"

    def _print_LetDecl(self, d: ast.LetDecl) -> str:
        return f"let {d.name} = {self.visit(d.value)}"

    # stages: a block is laid out by _units (header, one line per clause, "}"); this is its header
    def _print_Stage(self, s: ast.Stage) -> str:
        return s.kind + ("" if s.name is None else f" {s.name}") + " {"

    def _print_DataClause(self, c: ast.DataClause) -> str:
        return f"data {self.visit(c.ref)}" + ("" if c.batch is None else f" batch {c.batch}")

    def _print_LossClause(self, c: ast.LossClause) -> str:
        return f"loss {self.visit(c.expr)}"

    def _print_OptimizerClause(self, c: ast.OptimizerClause) -> str:
        return f"optimizer {self.visit(c.call)}"

    def _print_StepsClause(self, c: ast.StepsClause) -> str:
        return f"steps {c.n}"

    def _print_UnrollClause(self, c: ast.UnrollClause) -> str:
        return f"unroll {c.k}" + (f" update {self.joined(c.update)}" if c.update else "")

    def _print_AugmentClause(self, c: ast.AugmentClause) -> str:
        return f"augment {self.visit(c.call)}"

    def _print_SampleClause(self, c: ast.SampleClause) -> str:
        return f"sample {c.n} per step"

    def _print_WeightsClause(self, c: ast.WeightsClause) -> str:
        return f"weights {self.visit(c.expr)}"

    def _print_EndTaskWeightClause(self, c: ast.EndTaskWeightClause) -> str:
        return f"end_task_weight {self.visit(c.expr)}"

    # search spaces: each exclude rule on a continuation line, so a large space stays readable
    def _print_Factor(self, f: ast.Factor) -> str:
        return f"{f.stage}{{{self.joined(f.choices)}}}"

    def _print_Condition(self, c: ast.Condition) -> str:
        if c.op == "in":
            return f"{c.stage} in {{{self.joined(c.values)}}}"
        return f"{c.stage} {c.op} {self.visit(c.values[0])}"

    def _print_Exclude(self, x: ast.Exclude) -> str:
        return "exclude " + self.joined(x.conditions, " and ")

    def _print_SpaceDecl(self, d: ast.SpaceDecl) -> str:
        head = f"space {d.name} = {self.joined(d.factors, ' x ')}"
        if len(head) > WIDTH:  # one factor per line
            rest = ("x " + self.visit(f) for f in d.factors[1:])
            head = "\n".join([f"space {d.name} = {self.visit(d.factors[0])}", *rest])
        return "\n".join([head, *(self.visit(x) for x in d.excludes)])

    # the meta level
    def _print_ObjectiveDecl(self, d: ast.ObjectiveDecl) -> str:
        return f"meta_objective {self.visit(d.expr)} on {self.visit(d.on)}"

    def _print_HgEntry(self, e: ast.HgEntry) -> str:
        return f"{e.stage}: {self.visit(e.estimator)}"

    def _print_HypergradientDecl(self, d: ast.HypergradientDecl) -> str:
        check = "" if d.check_every is None else f" check every {d.check_every}"
        return f"hypergradient {self.joined(d.entries)}{check}"

    def _print_MetaOptimizerDecl(self, d: ast.MetaOptimizerDecl) -> str:
        return f"meta_optimizer {self.visit(d.call)}"

    def _print_Option(self, o: ast.Option) -> str:
        return f"{o.key} {self.visit(o.value)}"

    def _print_TrainDecl(self, d: ast.TrainDecl) -> str:
        return "train " + self.joined(d.options, " ")

    def _print_EvaluateDecl(self, d: ast.EvaluateDecl) -> str:
        against = f" against {self.joined(d.against)}" if d.against else ""
        return f"evaluate {self.visit(d.call)}{against}"

    def _print_Spec(self, s: ast.Spec) -> str:
        return print_spec(s)


_PRINTER = _Printer()


def print_expr(expr) -> str:
    """An expression (or any AST node) as .mpt text on one line.

    >>> from mptc.compiler.parse import parse
    >>> print_expr(parse("-(a ** 2) + f(x , k:1)[0]", "<t>", start="expr"))
    '-a ** 2 + f(x, k: 1)[0]'
    """
    return _PRINTER.visit(expr)


# ---- comments and blank lines ---------------------------------------------------------------------
@attrs.frozen
class Comment:
    """A `# ...` comment of the source; `trailing` when code precedes it on its line."""

    line: int
    col: int
    text: str
    trailing: bool


@attrs.frozen
class Blank:
    """An empty line of the source."""

    line: int
    col: int = 0


# A line up to its comment: strings cannot span lines, so a `#` outside a string on a line starts a comment
_CODE = re.compile(r'(?:[^"#\n]|"(?:[^"\\\n]|\\.)*")*')


def trivia(text: str) -> list:
    """The comments and blank lines of a source text, in order.

    >>> trivia('let a = "#1"  # one\\n\\n# two')
    [Comment(line=1, col=15, text='# one', trailing=True), Blank(line=2, col=0), \
Comment(line=3, col=1, text='# two', trailing=False)]
    """
    found = []
    for number, line in enumerate(text.split("\n"), 1):
        code = _CODE.match(line).group(0)
        if line[len(code):].startswith("#"):
            found.append(Comment(number, len(code) + 1, line[len(code):].rstrip(), bool(code.strip())))
        elif not line.strip():
            found.append(Blank(number))
    return found


# ---- layout --------------------------------------------------------------------------------------
@attrs.define
class _Unit:
    """One printed line (or a declaration with continuation lines) and the source region it came from."""

    text: str
    depth: int                      # indentation of the unit
    inner: int                      # indentation of comments placed before it ("}" : its clauses')
    start: tuple[int, int]          # (line, col) where it starts in the source
    end_line: int
    opens: bool = False             # a block header: no blank line right after it
    closes: bool = False            # a block's "}": no blank line right before it
    blank_before: bool = False      # when printed without a source: blank lines around blocks
    leading: list = attrs.Factory(list)
    trailing: Comment | None = None


def _units(spec: ast.Spec) -> list[_Unit]:
    units = []
    for i, item in enumerate(spec.items):
        s = item.span
        blank = i > 0 and (isinstance(item, ast.Stage) or isinstance(spec.items[i - 1], ast.Stage))
        if not isinstance(item, ast.Stage) or not item.clauses:
            text = _PRINTER.visit(item) + ("}" if isinstance(item, ast.Stage) else "")
            units.append(_Unit(text, 0, 0, (s.line, s.col), s.end_line, blank_before=blank))
            continue
        units.append(_Unit(_PRINTER.visit(item), 0, 0, (s.line, s.col), s.line, opens=True, blank_before=blank))
        for c in item.clauses:
            units.append(_Unit(_PRINTER.visit(c), 1, 1, (c.span.line, c.span.col), c.span.end_line))
        units.append(_Unit("}", 0, 1, (s.end_line, max(s.end_col - 1, 0)), s.end_line, closes=True))
    return units


def _attach(units: list[_Unit], found: list) -> list:
    """Hands each comment and blank line to a unit; returns those after the last unit."""
    starts, tail = [u.start for u in units], []
    for t in found:
        i = bisect.bisect_right(starts, (t.line, t.col)) - 1  # the last unit starting before it
        if i >= 0 and t.line <= units[i].end_line:  # on a line of that unit
            unit = units[i]
            if isinstance(t, Comment) and t.trailing and t.line == unit.end_line:
                unit.trailing = t
            elif isinstance(t, Comment):  # inside a declaration that now prints on one line: above it
                unit.leading.append(t)
        elif i + 1 < len(units):
            units[i + 1].leading.append(t)
        else:
            tail.append(t)
    return tail


def _lay_out(units: list[_Unit], tail: list) -> str:
    out: list[str] = []
    blank_ok = False  # no blank line at the top of the file or of a block, nor two in a row

    def put(leading, depth):
        nonlocal blank_ok
        for t in leading:
            if isinstance(t, Blank):
                if blank_ok and out[-1] != "":
                    out.append("")
            else:
                out.append(INDENT * depth + t.text)
                blank_ok = True

    for unit in units:
        put(([Blank(0)] if unit.blank_before else []) + unit.leading, unit.inner)
        if unit.closes:
            while out and out[-1] == "":
                out.pop()
        lines = unit.text.split("\n")
        out += [INDENT * unit.depth + lines[0], *(INDENT * (unit.depth + 1) + ln for ln in lines[1:])]
        if unit.trailing is not None:
            out[-1] += "  " + unit.trailing.text
        blank_ok = not unit.opens
    put(tail, 0)
    while out and out[-1] == "":
        out.pop()
    return "".join(line + "\n" for line in out)


def print_spec(spec: ast.Spec, source: str | None = None) -> str:
    """A whole spec as canonical text; with its `source`, that text's comments and blank lines are kept
    (without it, blocks are set apart by blank lines).

    >>> from mptc.compiler.parse import parse
    >>> print(print_spec(parse("let a=1 pretrain{steps 2 data d}", "<t>")), end="")
    let a = 1
    <BLANKLINE>
    pretrain {
      steps 2
      data d
    }
    """
    units = _units(spec)
    if source is None:
        return _lay_out(units, [])
    for unit in units:
        unit.blank_before = False
    return _lay_out(units, _attach(units, trivia(source)))


def format_text(text: str, path: str = "<spec>") -> str:
    """Canonical text of a spec's source, comments kept; raises SyntaxProblem when it does not parse."""
    return print_spec(parse(text, path), text)

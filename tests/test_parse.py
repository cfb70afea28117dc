"""The parser: small valid snippets against the exact AST (spans included), syntax errors at their exact
line and column, and the grammar itself (no LALR conflicts, every named slip reachable)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptc.compiler import ast
from mptc.compiler.ast import (BinOp, Call, Condition, DataClause, DataDecl, Exclude, Factor, HgEntry,
                               HypergradientDecl, Ident, Index, Kwarg, LetDecl, ListExpr, MetaDecl, ModelDecl,
                               Neg, Number, Option, Ref, SpaceDecl, SpecHeader, SplitPart, Stage, StepsClause,
                               String, TrainDecl, UnrollClause, VectorType)
from mptc.compiler.language import KEYWORDS as _KEYWORDS
from mptc.compiler.parse import _SLIPS, _describe, parse, parser
from mptc.errors import Span, SyntaxProblem

P = "t.mpt"


def S(line, col, end_line, end_col):
    return Span(P, line, col, end_line, end_col)


def N(line, col, value, text=None):
    """A number literal on one line."""
    text = text or str(value)
    return Number(S(line, col, line, col + len(text)), value, text)


def R(line, col, *parts):
    """A reference on one line."""
    return Ref(S(line, col, line, col + len(".".join(parts))), parts)


def I(line, col, name):  # noqa: E743
    return Ident(S(line, col, line, col + len(name)), name)


# ---- golden ASTs ---------------------------------------------------------------------------------
GOLDEN = [
    ("let a = 2 * b",
     LetDecl(S(1, 1, 1, 14), "a", BinOp(S(1, 9, 1, 14), "*", N(1, 9, 2), R(1, 13, "b")), S(1, 5, 1, 6))),
    ("model encoder = mlp(hidden: [64, 8])",
     ModelDecl(S(1, 1, 1, 37), "encoder",
               Call(S(1, 17, 1, 37), R(1, 17, "mlp"), (),
                    (Kwarg(S(1, 21, 1, 36), "hidden", ListExpr(S(1, 29, 1, 36), (N(1, 30, 64), N(1, 34, 8)))),)),
               S(1, 7, 1, 14))),
    ("meta w: vector[100] = 0.0 in [-1, 1]",
     MetaDecl(S(1, 1, 1, 37), "w", VectorType(S(1, 9, 1, 20), 100), N(1, 23, 0.0, "0.0"),
              (Neg(S(1, 31, 1, 33), N(1, 32, 1)), N(1, 35, 1)), S(1, 6, 1, 7))),
    ("pretrain {\n  data pt.train batch 32\n  steps 5\n}",
     Stage(S(1, 1, 4, 2), "pretrain", None,
           (DataClause(S(2, 3, 2, 25), R(2, 8, "pt", "train"), 32), StepsClause(S(3, 3, 3, 10), 5)))),
    ('train seed -3 device "cpu"',
     TrainDecl(S(1, 1, 1, 27), (Option(S(1, 7, 1, 14), "seed", N(1, 12, -3)),
                                Option(S(1, 15, 1, 27), "device", String(S(1, 22, 1, 27), "cpu"))))),
    ("space s = a{p, q} x b{u} exclude a == p and b != u",
     SpaceDecl(S(1, 1, 1, 51), "s",
               (Factor(S(1, 11, 1, 18), "a", (I(1, 13, "p"), I(1, 16, "q"))),
                Factor(S(1, 21, 1, 25), "b", (I(1, 23, "u"),))),
               (Exclude(S(1, 26, 1, 51), (Condition(S(1, 34, 1, 40), "a", "==", (I(1, 39, "p"),)),
                                          Condition(S(1, 45, 1, 51), "b", "!=", (I(1, 50, "u"),)))),),
               S(1, 7, 1, 8))),
    ("hypergradient pretrain: ift(cg(iters: 5)), finetune: unroll check every 10",
     HypergradientDecl(S(1, 1, 1, 75), (
         HgEntry(S(1, 15, 1, 42), "pretrain",
                 Call(S(1, 25, 1, 42), R(1, 25, "ift"),
                      (Call(S(1, 29, 1, 41), R(1, 29, "cg"), (),
                            (Kwarg(S(1, 32, 1, 40), "iters", N(1, 39, 5)),)),), ())),
         HgEntry(S(1, 44, 1, 60), "finetune", R(1, 54, "unroll"))), 10)),
    ("data ft = f(of: pt) split train 0.5, val 0.5",
     DataDecl(S(1, 1, 1, 45), "ft",
              Call(S(1, 11, 1, 20), R(1, 11, "f"), (), (Kwarg(S(1, 13, 1, 19), "of", R(1, 17, "pt")),)),
              (SplitPart(S(1, 27, 1, 36), "train", N(1, 33, 0.5)), SplitPart(S(1, 38, 1, 45), "val", N(1, 42, 0.5))),
              S(1, 6, 1, 8))),
    ('spec demo "a \\"quoted\\" doc, Méta"', SpecHeader(S(1, 1, 1, 35), "demo", 'a "quoted" doc, Méta')),
    ("finetune { unroll 3 update a, b }",
     Stage(S(1, 1, 1, 34), "finetune", None, (UnrollClause(S(1, 12, 1, 32), 3, (I(1, 28, "a"), I(1, 31, "b"))),))),
]


@pytest.mark.parametrize("text, node", GOLDEN, ids=[t.split()[0] for t, _ in GOLDEN])
def test_golden_ast(text, node):
    assert parse(text, P).items == (node,)


EXPRESSIONS = [
    # -a ** 2 binds like Python: -(a ** 2); * and / before +, left to right; indexing binds tightest
    ("-a ** 2 + b[0] * 3 / c",
     BinOp(S(1, 1, 1, 23), "+",
           Neg(S(1, 1, 1, 8), BinOp(S(1, 2, 1, 8), "**", R(1, 2, "a"), N(1, 7, 2))),
           BinOp(S(1, 11, 1, 23), "/",
                 BinOp(S(1, 11, 1, 19), "*", Index(S(1, 11, 1, 15), R(1, 11, "b"), N(1, 13, 0)), N(1, 18, 3)),
                 R(1, 22, "c")))),
    ("a - b - c", BinOp(S(1, 1, 1, 10), "-", BinOp(S(1, 1, 1, 6), "-", R(1, 1, "a"), R(1, 5, "b")), R(1, 9, "c"))),
    ("2 ** 3 ** 2", BinOp(S(1, 1, 1, 12), "**", N(1, 1, 2), BinOp(S(1, 6, 1, 12), "**", N(1, 6, 3), N(1, 11, 2)))),
    ("(a + b) * c", BinOp(S(1, 1, 1, 12), "*", BinOp(S(1, 2, 1, 7), "+", R(1, 2, "a"), R(1, 6, "b")), R(1, 11, "c"))),
    ("1e-3", N(1, 1, 0.001, "1e-3")),
    (".5", N(1, 1, 0.5, ".5")),
    ("[]", ListExpr(S(1, 1, 1, 3), ())),
    ("f()", Call(S(1, 1, 1, 4), R(1, 1, "f"), (), ())),
    ("m.n(x, k: 1)",
     Call(S(1, 1, 1, 13), R(1, 1, "m", "n"), (R(1, 5, "x"),), (Kwarg(S(1, 8, 1, 12), "k", N(1, 11, 1)),))),
]


@pytest.mark.parametrize("text, node", EXPRESSIONS, ids=[t for t, _ in EXPRESSIONS])
def test_golden_expression(text, node):
    assert parse(text, P, start="expr") == node


def test_numbers_keep_their_spelling_and_type():
    values = [(e.value, e.text) for e in parse("[1, 1.0, 1e3, 007]", P, start="expr").items]
    assert values == [(1, "1"), (1.0, "1.0"), (1000.0, "1e3"), (7, "007")]
    assert [type(v) for v, _ in values] == [int, float, float, int]


def test_string_escapes_and_unicode():
    # \" \\ \n \t decode; any other backslash is kept; non-ASCII text is not garbled
    assert parse(r'"a\"b\\c\nd\te\qü"', P, start="expr").value == 'a"b\\c\nd\te\\qü'


def test_optional_parts_are_none_or_empty():
    meta, data, stage, ev = parse("meta s: scalar\ndata d = f()\nfinetune { unroll 2 }\nevaluate g()", P).items
    assert (meta.init, meta.bounds, data.split, stage.clauses[0].update, ev.against) == (None, None, (), (), ())
    assert parse("spec s", P).items[0].doc is None
    assert parse("hypergradient pretrain: ift", P).items[0].check_every is None
    assert parse("pretrain { data d }", P).items[0].clauses[0].batch is None


def test_every_kind_of_item():
    text = """spec s
data d = f()
model m = mlp()
head h = linear(out: 1)
meta a: scalar
meta b: network mlp(hidden: [2])
meta c: factored(sp)
let l = a
pretrain { data d loss l optimizer sgd(lr: 1) steps 1 augment noise() }
finetune { data d loss l unroll 1 }
auxiliary sp { data d loss l sample 2 per step weights c end_task_weight 0.5 }
space sp = t{x, y}
meta_objective l on d
hypergradient pretrain: ift
meta_optimizer adam()
train seed 1
evaluate finetune() against pretrain
"""
    kinds = [type(i).__name__ for i in parse(text, P).items]
    assert kinds == ["SpecHeader", "DataDecl", "ModelDecl", "HeadDecl", "MetaDecl", "MetaDecl", "MetaDecl", "LetDecl",
                     "Stage", "Stage", "Stage", "SpaceDecl", "ObjectiveDecl", "HypergradientDecl", "MetaOptimizerDecl",
                     "TrainDecl", "EvaluateDecl"]
    aux = parse(text, P).items[10]
    assert (aux.kind, aux.name) == ("auxiliary", "sp")
    assert [type(c).__name__ for c in aux.clauses] == ["DataClause", "LossClause", "SampleClause", "WeightsClause",
                                                       "EndTaskWeightClause"]
    assert [type(m.type).__name__ for m in parse(text, P).items[4:7]] == ["ScalarType", "NetworkType", "FactoredType"]


@pytest.mark.parametrize("text", [
    "let steps = 1", "let update = x", "let data = 1", "meta in: scalar", "let a = x * y",  # keywords as names
    "space s = x{a} x y{b}",  # `x` is the product sign and a stage name
    "", "# only a comment\n", "let a = 1 # trailing comment",
])
def test_keywords_are_names_where_a_name_is_expected(text):
    parse(text, P)


def test_the_empty_spec_has_a_span():
    assert parse("", P) == ast.Spec(Span(P, 1, 1, 1, 1), ())


# ---- syntax errors -------------------------------------------------------------------------------
SYNTAX_ERRORS = [
    # text, line, col, end_col, message, hint
    ("model m = mlp(a = 1)", 1, 17, 18,
     "syntax error: '=' where ':' belongs (keyword arguments are written `name: value`)", None),
    ("let a: 1", 1, 6, 7, "syntax error: ':' where '=' belongs", None),
    ("model m = mlp(: 1)", 1, 15, 16, "syntax error: keyword argument without a name", None),
    ("let a = [1,]", 1, 12, 13, "syntax error: stray comma", None),
    ("let a = 1\nmodel m = mlp(a: 1,)", 2, 20, 21, "syntax error: stray comma", None),  # not the first item
    ("let a = f(1\n\nmodel m = mlp()", 1, 12, 13, "syntax error: missing ')'", None),
    ("let a = f(g(x)\ntrain seed 1", 1, 15, 16, "syntax error: missing ')'", None),
    ("pretrain {\n  steps 1\n\nfinetune {}", 2, 10, 11, "syntax error: missing '}' to close the block", None),
    ("pretrain { loss f(x)  # the loss\n", 1, 21, 22, "syntax error: missing '}' to close the block", None),
    ("let a = 1 ;", 1, 11, 12, "syntax error: unexpected character ';'", None),
    ("let a =", 1, 8, 9, "syntax error: unexpected end of file; expected one of '(', '-', '[', a name, a number, "
                         "a string", None),
    ("let a = 1 2", 1, 11, 12, "syntax error: unexpected '2'; expected one of '*', '**', '+', '-', '/', '[', "
                               "'auxiliary', 'data', 'evaluate', 'finetune', 'head', 'hypergradient', 'import', 'let', "
                               "'meta', 'meta_objective', 'meta_optimizer', 'model', 'pretrain', 'space', 'spec', 'train', "
                               "the end of the file", None),
    ("modle m = mlp()", 1, 1, 6, "syntax error: unexpected 'modle'; expected one of 'auxiliary', 'data', 'evaluate', "
                                 "'finetune', 'head', 'hypergradient', 'import', 'let', 'meta', 'meta_objective', "
                                 "'meta_optimizer', 'model', 'pretrain', 'space', 'spec', 'train', the end of the file",
     "model"),
    ("pretrain { stpes 1 }", 1, 12, 17, "syntax error: unexpected 'stpes'; expected one of 'augment', 'data', "
                                        "'end_task_weight', 'loss', 'optimizer', 'sample', 'steps', 'unroll', "
                                        "'weights', '}'", "steps"),
    ("meta_optimizer sgd(lr: 1)\nmeta_optimiser sgd(lr: 1)", 2, 1, 15, None, "meta_optimizer"),
    ("meta v: vector[n]", 1, 16, 17, "syntax error: unexpected 'n'; expected an integer", None),
    ("train device cuda:1", 1, 18, 19, None, None),
    ('spec s "no end', 1, 8, 9, "syntax error: unexpected character '\"'", None),
]


@pytest.mark.parametrize("text, line, col, end_col, message, hint", SYNTAX_ERRORS,
                         ids=[t.replace("\n", "/")[:30] for t, *_ in SYNTAX_ERRORS])
def test_syntax_error_position_and_message(text, line, col, end_col, message, hint):
    with pytest.raises(SyntaxProblem) as info:
        parse(text, P)
    e = info.value
    assert (e.span.path, e.span.line, e.span.col, e.span.end_line, e.span.end_col) == (P, line, col, line, end_col)
    if message is not None:
        assert e.message == message
    assert e.message.startswith("syntax error: ")
    assert e.hint == hint


def test_syntax_errors_in_expressions_use_the_same_labels():
    with pytest.raises(SyntaxProblem, match="missing '\\)'"):
        parse("f(1", P, start="expr")
    with pytest.raises(SyntaxProblem, match="stray comma"):
        parse("f(1,)", P, start="expr")


# ---- the grammar ---------------------------------------------------------------------------------
def test_grammar_has_no_lalr_conflicts():
    pytest.importorskip("interegular")  # strict mode also checks terminal collisions with it
    strict = parser(strict=True)  # raises GrammarError on a shift/reduce or reduce/reduce conflict
    assert strict is not parser() and strict.options.strict


def test_the_declaration_keywords_are_those_the_grammar_starts_items_with():
    # the slips after an unclosed ')' or '}' are recognised by the next declaration keyword
    first = parser().parse_interactive("", start="start").accepts() - {"$END"}
    assert sorted(_describe(t).strip("'") for t in first) == sorted(_KEYWORDS)


@pytest.mark.parametrize("label", list(_SLIPS))
def test_every_slip_example_is_an_error_that_gets_its_label(label):
    for example in _SLIPS[label]:
        with pytest.raises(SyntaxProblem) as info:
            parse(example, P)
        assert info.value.message == f"syntax error: {label}", example


PIECES = list("abmxy_019.,:;=+-*/()[]{}\"# \n") + ["model ", "let ", "data ", "meta ", "pretrain ", "finetune ",
                                                   "steps ", "split ", "in ", "x ", "é"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_parse_raises_only_syntax_problems(text):
    try:
        spec = parse(text, P)
    except SyntaxProblem as e:
        assert e.span.line >= 1 and e.span.col >= 1 and e.span.end_col > e.span.col
    else:
        assert isinstance(spec, ast.Spec)

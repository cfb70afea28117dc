"""The fast parser against lark: wherever the fast path accepts a text, lark builds the same tree (spans and
number types included); wherever lark rejects one, the fast path bails, so that lark reports the error. The
texts: every spec of the repository and of the golden corpora, every string written in the tests, printed
random syntax trees, and mutated specs."""
import ast as pyast
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptc.compiler.parse import MAX_NESTING, _Bail, _fast_parse, _lark_parse, parse
from mptc.compiler.printer import print_expr, print_spec
from mptc.errors import SyntaxProblem
from tests.test_fmt import exprs, specs
from tests.test_fuzz import mutated

ROOT = Path(__file__).resolve().parent.parent
P = "t.mpt"
SPECS = sorted(ROOT.glob("specs/**/*.mpt")) + sorted((ROOT / "tests" / "fixtures").glob("**/*.mpt"))


def _strings_in_tests() -> list[str]:
    """Every string literal of the test modules: snippets, specs, expressions, and much that is neither."""
    found = set()
    for module in sorted((ROOT / "tests").glob("*.py")):
        for node in pyast.walk(pyast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, pyast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return sorted(found)


def outcome(parse_fn, text: str, start: str):
    """What a path makes of the text: its tree, or the exception it raises."""
    try:
        return parse_fn(text, P, start)
    except (SyntaxProblem, _Bail) as e:
        return e


def same(a, b) -> bool:
    """Equal trees (attrs compares spans too), with equal reprs (1 and 1.0 are equal, but not the same)."""
    return a == b and repr(a) == repr(b)


def agree(text: str, start: str = "start"):
    """Checks the two paths on one text; returns (fast, lark) outcomes."""
    fast, lark = outcome(_fast_parse, text, start), outcome(_lark_parse, text, start)
    if not isinstance(fast, _Bail):
        assert not isinstance(lark, SyntaxProblem), f"the fast path accepts what lark rejects: {text!r}"
        assert same(fast, lark), text
    return fast, lark


def parse_is_lark(text: str, lark, start: str = "start"):
    """`parse` returns what lark returns, or raises the same error."""
    final = outcome(parse, text, start)
    if isinstance(lark, SyntaxProblem):
        assert isinstance(final, SyntaxProblem)
        assert (final.span, final.message, final.hint) == (lark.span, lark.message, lark.hint)
    else:
        assert same(final, lark)


def accepted_by_both(text: str, start: str = "start"):
    fast, lark = agree(text, start)
    assert not isinstance(lark, SyntaxProblem), lark.message
    assert not isinstance(fast, _Bail), f"the fast path bails on {text!r}"
    return fast


def bails(text: str, start: str = "start"):
    """The fast path bails, lark reports a syntax error, and so does `parse`."""
    fast, lark = agree(text, start)
    assert isinstance(fast, _Bail) and isinstance(lark, SyntaxProblem)
    parse_is_lark(text, lark, start)


def paren_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


# ---- corpora -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_spec_file(path):
    text = path.read_text(encoding="utf-8")
    if path.parent.name == "errors":  # the golden corpus of errors: some are syntax errors, lark's to report
        agree(text)
    else:
        accepted_by_both(text)


def test_every_string_in_the_tests():
    accepted = 0
    for text in _strings_in_tests():
        for start in ("start", "expr"):
            fast, lark = agree(text, start)
            if not isinstance(lark, SyntaxProblem):
                accepted += 1
                assert not isinstance(fast, _Bail) or paren_depth(text) > MAX_NESTING // 2, (text, start)
    assert accepted > 300  # the corpus holds many valid snippets, not only errors


# ---- what lark's contextual lexer and propagate_positions do -------------------------------------
@pytest.mark.parametrize("text", [
    "let data = 1", "let in = on", "model x = x(x: x)", "meta in: scalar = in in [in, on]", "let a = per.step",
    "pretrain { data data.split batch 2 loss loss }", "auxiliary exclude { unroll 2 update update, x }",
    "space x = x{x, and} x exclude{in} exclude x in {x} and exclude == exclude exclude x != in",
    "meta_objective on on on", "data split = f() split split 1, x 2", "train data 1 exclude x in y per -2",
    "hypergradient check: check check every 3", "evaluate against() against against, x", "train a - 1e-3",
    "spec spec", 'spec s "doc"', "meta v: vector[3]", "meta f: factored(space)", "meta n: network mlp()",
    "train x 1ex 2", "finetune { sample 2 per step augment per.step() end_task_weight step }",
])
def test_keywords_are_names_where_lark_reads_names(text):
    accepted_by_both(text)


def test_a_declaration_keyword_ends_the_train_options():
    spec = accepted_by_both("train seed 1 data d = f()\ntrain data 1")
    assert [type(i).__name__ for i in spec.items] == ["TrainDecl", "DataDecl", "TrainDecl"]


@pytest.mark.parametrize("text", [
    "(a) * b", "-(a)", "(a)[0]", "x[(1)]", "f((a), k: (b))", "[(a), (b)]", "(a ** (b))", "((a))", "-(-(a))",
    "a - -b * -c ** -d[0] / (e + f) - g", "a ** b ** c", "-a ** b", "a[0][1] ** 2", "f(x)[0] ** g(y)",
    "(-a) ** 2", "((a) * b)", "(a)\n\n  ", "  # lead\n (\n a\n )",
])
def test_expressions_and_their_spans(text):
    accepted_by_both(text, "expr")


@pytest.mark.parametrize("text", [
    "data d = f() split a (0.5), b (1)", "pretrain { loss (x) weights -(w) }", "auxiliary a {}",
    "meta w: scalar = (1) in [(0), (1)]", "hypergradient a: (b), c: d", "let a = (b)\nlet c =\n  (d)\n",
    "evaluate f() against a\n# done\n", "", "# only a comment", "let a = 1 # trailing", "\n\n  \t\f\r\n",
    "train lr -.5e-3 on x", "spec s\r\n\"doc\"\r\nlet a = \"x\\\"y\"",
])
def test_declarations_and_their_spans(text):
    accepted_by_both(text)


# ---- what the fast path leaves to lark -------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "pretrain { steps 1.5 }", "pretrain { steps 1e5 }", "pretrain { steps 1. }", "meta v: vector[2.0]",
    "pretrain { steps \u00b2 }", "let a = \u0663", "let a = \u00e9", "let a = f(", "let a = f(x,)", "let a = [1,]",
    "let a", "model m = mlp", "meta_optimiser sgd()", "train", "train 1", "train a -b", "let a = x.5",
    "space s = a{b} exclude a = b", 'spec s "no end', "let a = 1 2", "let a = b c", "let a = 1 ;",
    "hypergradient a: b check every", "let a = " + "9" * 5_000, "pretrain { steps " + "9" * 5_000 + " }",
    "let a = " + "-" * 101 + "1", "let a = " + " + ".join(["x"] * 200), "let a = " + " ** ".join(["2"] * 200),
    "let a = " + "[" * 200 + "]" * 200, "let a = " + "f(" * 200 + ")" * 200, "let a = g(y)(z)", "let a = (b",
])
def test_what_lark_rejects_the_fast_path_leaves_to_lark(text):
    bails(text)


@pytest.mark.parametrize("text", ["a b", "-", "f(x: )", "", "a ;", "(a))", "x.", "a in b"])
def test_what_lark_rejects_as_an_expression_the_fast_path_leaves_to_lark(text):
    bails(text, "expr")


@pytest.mark.parametrize("deepest", range(MAX_NESTING - 2, MAX_NESTING + 3))
def test_nesting_up_to_the_limit_is_parsed_fast_beyond_it_by_lark(deepest):
    # the levels of lark's tree: `let` 1, the expression's root 2, the deepest node `deepest`
    for deep in ("-" * (deepest - 2) + "x", "[" * (deepest - 1) + "]" * (deepest - 1),
                 " + ".join(["x"] * (deepest - 1)), " ** ".join(["x"] * (deepest - 1)), "f(" * (deepest - 2) + "x" +
                 ")" * (deepest - 2), "x" + "[0]" * (deepest - 2)):
        if deepest <= MAX_NESTING:
            accepted_by_both("let a = " + deep)
        else:
            bails("let a = " + deep)


def test_deep_parentheses_are_lark_s_to_parse():
    text = "let a = " + "(" * 1_000 + "x" + ")" * 1_000  # no deeper in lark's tree: (x) is x
    fast, lark = agree(text)
    assert isinstance(fast, _Bail) and not isinstance(lark, SyntaxProblem)
    parse_is_lark(text, lark)


# ---- properties ----------------------------------------------------------------------------------
BLANKS = st.sampled_from([" ", " ", "\n", "\n\n  ", "\t", " # note\n", "\r\n"])


def _call(parts) -> str:
    func, args, kwargs = parts
    return f"{func}({', '.join(args + [f'{name}: {value}' for name, value in kwargs])})"


def _compound(children):
    kwargs = st.lists(st.tuples(st.sampled_from(["k", "in", "data"]), children), max_size=2)
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**"]), children).map(" ".join),
        children.map("-{}".format), children.map("({})".format), children.map("( {} )".format),
        st.tuples(children, children).map("{0[0]}[{0[1]}]".format),
        st.lists(children, max_size=3).map(", ".join).map("[{}]".format),
        st.tuples(st.sampled_from(["f", "g.h", "x"]), st.lists(children, max_size=2), kwargs).map(_call))


expression_texts = st.recursive(st.sampled_from(["x", "a.b", "1", "2.5e3", ".5", '"s"', "f()", "[]", "in"]),
                                _compound, max_leaves=12)


@st.composite
def spread(draw, texts):
    """A text with each of its spaces replaced by blanks of any kind: newlines and comments too."""
    parts = draw(texts).split(" ")
    return "".join(part + draw(BLANKS) for part in parts[:-1]) + parts[-1]


@settings(max_examples=100, deadline=None)
@given(spread(expression_texts))
def test_expressions_with_parentheses_anywhere_and_lines_between(text):
    accepted_by_both(text, "expr")
    accepted_by_both(f"let a =\n{text}\nmeta_objective {text} on d\npretrain {{ loss {text}\n}}")


@settings(max_examples=100, deadline=None)
@given(exprs)
def test_printed_expressions(expr):
    accepted_by_both(print_expr(expr), "expr")


@settings(max_examples=60, deadline=None)
@given(specs)
def test_printed_specs(spec):
    accepted_by_both(print_spec(spec))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=mutated().filter(lambda data: len(data) < 8_000))  # nesting 10,000 deep: lark's slowest, tested above
def test_mutated_specs(data):
    text = data.decode("utf-8", "replace")
    fast, lark = agree(text)
    if not isinstance(lark, SyntaxProblem):  # lark parses what the fast path bails on only nested in parentheses
        assert not isinstance(fast, _Bail) or paren_depth(text) > MAX_NESTING // 2, text
    if isinstance(fast, _Bail):
        parse_is_lark(text, lark)

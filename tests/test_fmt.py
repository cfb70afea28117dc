"""The printer and `mptc fmt`: for generated ASTs `parse(print(ast)) == ast` (spans aside) and printing is
idempotent; minimal parentheses; every spec of the repository round-trips; comments survive formatting."""
import re
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptc.cli import main
from mptc.compiler import ast
from mptc.compiler.ir import to_json
from mptc.compiler.lower import compile_spec
from mptc.compiler.parse import MAX_NESTING, parse, parser
from mptc.compiler.printer import Comment, format_text, print_expr, print_spec, spell_number, trivia
from mptc.errors import Span, SyntaxProblem

ROOT = Path(__file__).resolve().parent.parent
DUMMY = Span("<t>", 0, 0, 0, 0)
P = "t.mpt"


def strip(node):
    """The node with every span replaced by one dummy span, for comparing ASTs by content."""
    if isinstance(node, Span):
        return DUMMY
    if isinstance(node, tuple):
        return tuple(strip(n) for n in node)
    if attrs.has(type(node)):
        return attrs.evolve(node, **{f.name: strip(getattr(node, f.name)) for f in attrs.fields(type(node))})
    return node


def roundtrip(spec: ast.Spec) -> str:
    text = print_spec(spec)
    again = parse(text, P)
    assert strip(again) == strip(spec), text
    assert print_spec(again) == text  # idempotent
    return text


# ---- strategies: valid AST values ----------------------------------------------------------------
KEYWORDS = {t.pattern.value for t in parser().terminals if t.pattern.type == "str" and t.pattern.value.isidentifier()}
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
names = st.builds(str.__add__, st.sampled_from(LETTERS), st.text(LETTERS + "0123456789", max_size=6)).filter(
    lambda n: n not in KEYWORDS)
idents = st.builds(ast.Ident, st.just(DUMMY), names)
ints = st.integers(0, 10**20)
NUMBER_TEXT = r"([0-9]{1,4}\.[0-9]{0,3}|\.[0-9]{1,3}|[0-9]{1,25})([eE][-+]?[0-9]{1,3})?"


def _value(text: str):
    return int(text) if text.isdigit() else float(text)


number_texts = st.one_of(st.integers(0, 10**25).map(str), st.floats(0, allow_infinity=False).map(repr),
                         st.from_regex(NUMBER_TEXT, fullmatch=True))
numbers = number_texts.map(lambda t: ast.Number(DUMMY, _value(t), t))
signed_numbers = numbers.map(lambda n: ast.Number(DUMMY, -n.value, "-" + n.text))  # `train seed -3` only
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
strings = st.builds(ast.String, st.just(DUMMY), texts)
refs = st.builds(ast.Ref, st.just(DUMMY), st.lists(names, min_size=1, max_size=3).map(tuple))


def tuples(strategy, min_size=0, max_size=3):
    return st.lists(strategy, min_size=min_size, max_size=max_size).map(tuple)


def calls(exprs):
    kwargs = tuples(st.builds(ast.Kwarg, st.just(DUMMY), names, exprs))
    return st.builds(ast.Call, st.just(DUMMY), refs, tuples(exprs), kwargs)


def _compound(children):
    return st.one_of(
        st.builds(ast.BinOp, st.just(DUMMY), st.sampled_from(["+", "-", "*", "/", "**"]), children, children),
        st.builds(ast.Neg, st.just(DUMMY), children),
        st.builds(ast.Index, st.just(DUMMY), children, children),
        st.builds(ast.ListExpr, st.just(DUMMY), tuples(children)),
        calls(children))


exprs = st.recursive(st.one_of(numbers, strings, refs), _compound, max_leaves=10)
any_call = calls(exprs)
meta_types = st.one_of(st.builds(ast.ScalarType, st.just(DUMMY)), st.builds(ast.VectorType, st.just(DUMMY), ints),
                       st.builds(ast.NetworkType, st.just(DUMMY), any_call),
                       st.builds(ast.FactoredType, st.just(DUMMY), names))
clauses = st.one_of(
    st.builds(ast.DataClause, st.just(DUMMY), refs, st.none() | ints),
    st.builds(ast.LossClause, st.just(DUMMY), exprs),
    st.builds(ast.OptimizerClause, st.just(DUMMY), any_call),
    st.builds(ast.StepsClause, st.just(DUMMY), ints),
    st.builds(ast.UnrollClause, st.just(DUMMY), ints, tuples(idents)),
    st.builds(ast.AugmentClause, st.just(DUMMY), any_call),
    st.builds(ast.SampleClause, st.just(DUMMY), ints),
    st.builds(ast.WeightsClause, st.just(DUMMY), exprs),
    st.builds(ast.EndTaskWeightClause, st.just(DUMMY), exprs))
conditions = st.one_of(
    st.builds(ast.Condition, st.just(DUMMY), names, st.just("in"), tuples(idents, 1)),
    st.builds(ast.Condition, st.just(DUMMY), names, st.sampled_from(["==", "!="]), tuples(idents, 1, 1)))
option_values = st.one_of(numbers, signed_numbers, strings, names.map(lambda n: ast.Ref(DUMMY, (n,))))
items = st.one_of(
    st.builds(ast.SpecHeader, st.just(DUMMY), names, st.none() | texts),
    st.builds(ast.DataDecl, st.just(DUMMY), names, any_call,
              tuples(st.builds(ast.SplitPart, st.just(DUMMY), names, exprs)), st.just(DUMMY)),
    st.builds(ast.ModelDecl, st.just(DUMMY), names, any_call, st.just(DUMMY)),
    st.builds(ast.HeadDecl, st.just(DUMMY), names, any_call, st.just(DUMMY)),
    st.builds(ast.MetaDecl, st.just(DUMMY), names, meta_types, st.none() | exprs, st.none() | st.tuples(exprs, exprs),
              st.just(DUMMY)),
    st.builds(ast.LetDecl, st.just(DUMMY), names, exprs, st.just(DUMMY)),
    st.builds(ast.Stage, st.just(DUMMY), st.sampled_from(["pretrain", "finetune"]), st.none(), tuples(clauses)),
    st.builds(ast.Stage, st.just(DUMMY), st.just("auxiliary"), names, tuples(clauses)),
    st.builds(ast.SpaceDecl, st.just(DUMMY), names,
              tuples(st.builds(ast.Factor, st.just(DUMMY), names, tuples(idents, 1, 4)), 1, 6),
              tuples(st.builds(ast.Exclude, st.just(DUMMY), tuples(conditions, 1))), st.just(DUMMY)),
    st.builds(ast.ObjectiveDecl, st.just(DUMMY), exprs, refs),
    st.builds(ast.HypergradientDecl, st.just(DUMMY),
              tuples(st.builds(ast.HgEntry, st.just(DUMMY), names, exprs), 1), st.none() | ints),
    st.builds(ast.MetaOptimizerDecl, st.just(DUMMY), any_call),
    st.builds(ast.TrainDecl, st.just(DUMMY), tuples(st.builds(ast.Option, st.just(DUMMY), names, option_values), 1)),
    st.builds(ast.EvaluateDecl, st.just(DUMMY), any_call, tuples(idents)))
specs = st.builds(ast.Spec, st.just(DUMMY), tuples(items, max_size=6))


# ---- properties ----------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(exprs)
def test_expressions_round_trip(expr):
    text = print_expr(expr)
    again = parse(text, P, start="expr")
    assert strip(again) == strip(expr), text
    assert print_expr(again) == text


@settings(max_examples=120, deadline=None)
@given(specs)
def test_specs_round_trip_and_printing_is_idempotent(spec):
    text = roundtrip(spec)
    assert format_text(text, P) == text  # the formatter agrees with the printer, blank lines included


@st.composite
def commented(draw):
    """A printed spec with comments and blank lines inserted between and at the end of its lines."""
    spec = draw(specs)
    lines, out, notes = print_spec(spec).split("\n")[:-1], [], []
    body = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=10)
    for line in lines + [None]:
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                out.append("")
            else:
                notes.append(f"# {len(notes)} {draw(body)}".rstrip())
                out.append(" " * draw(st.integers(0, 4)) + notes[-1])
        if line is not None:
            if draw(st.booleans()):
                notes.append(f"# {len(notes)} {draw(body)}".rstrip())
                line += " " * draw(st.integers(0, 3)) + notes[-1]
            out.append(line)
    return spec, "\n".join(out) + "\n", notes


@settings(max_examples=120, deadline=None)
@given(commented())
def test_formatting_keeps_every_comment_in_order(case):
    spec, text, notes = case
    formatted = format_text(text, P)
    assert strip(parse(formatted, P)) == strip(spec)
    assert [c.text for c in trivia(formatted) if isinstance(c, Comment)] == notes
    assert format_text(formatted, P) == formatted


# ---- layout --------------------------------------------------------------------------------------
PARENS = [
    ("a - (b - c)", "a - (b - c)"), ("(a * b) + c", "a * b + c"), ("(a - b) - c", "a - b - c"),
    ("a / (b * c)", "a / (b * c)"), ("(a / b) * c", "a / b * c"), ("(a + b) * c", "(a + b) * c"),
    ("-(a ** 2)", "-a ** 2"), ("(-a) ** 2", "(-a) ** 2"), ("2 ** (3 ** 2)", "2 ** 3 ** 2"),
    ("(2 ** 3) ** 2", "(2 ** 3) ** 2"), ("a ** -b", "a ** -b"), ("-(-a)", "--a"), ("-(a * b)", "-(a * b)"),
    ("(a + b)[0]", "(a + b)[0]"), ("(-a)[0]", "(-a)[0]"), ("(f(x))[0]", "f(x)[0]"), ("a * (-b)", "a * -b"),
    ("a - (-b)", "a - -b"), ("((((x))))", "x"), ("a[(b + c)]", "a[b + c]"), ("(a[0]) ** 2", "a[0] ** 2"),
    ("f( x ,k:(1+2) )", "f(x, k: 1 + 2)"), ("[ 1,2 ]", "[1, 2]"), ("[]", "[]"), ("m.n()", "m.n()"),
    ("1e-3 * .5 + 007", "1e-3 * .5 + 007"), ('"a\\"b\\\\c\\n"', '"a\\"b\\\\c\\n"'),
]


@pytest.mark.parametrize("text, printed", PARENS, ids=[t for t, _ in PARENS])
def test_minimal_parentheses(text, printed):
    assert print_expr(parse(text, P, start="expr")) == printed


def test_numbers_without_a_valid_spelling_are_spelt_from_their_value():
    for value, text in [(0.001, "bogus"), (1e-05, ""), (3, "3.0"), (float("inf"), "inf"), (-2, "-x")]:
        printed = print_expr(ast.Number(DUMMY, value, text))
        assert printed == spell_number(value)
        back = parse(f"train v {printed}", P).items[0].options[0].value
        assert back.value == value and type(back.value) is type(value)
    with pytest.raises(ValueError):
        spell_number(float("nan"))


def test_an_unknown_node_is_refused():
    with pytest.raises(TypeError, match="no rule for str"):
        print_expr("x")


def test_nesting_up_to_the_limit_prints_and_checks(monkeypatch):
    # the parser's limit leaves room on Python's stack for everything that recurses over the tree
    monkeypatch.chdir(ROOT)
    deep = "-" * (MAX_NESTING - 4) + "w"  # start > let > * > call > the minus signs > w: exactly the limit
    text = (ROOT / "specs" / "quickstart.mpt").read_text(encoding="utf-8")
    assert "2 * sigmoid(w)" in text
    text = text.replace("2 * sigmoid(w)", f"2 * sigmoid({deep})")
    assert f"2 * sigmoid({deep})" in format_text(text, P)
    compile_spec(text, P)
    with pytest.raises(SyntaxProblem, match="nested more than"):
        parse(text.replace(deep, "--" + deep), P)


COMMENTED = """# header comment
spec s   # trailing on spec


# two blank lines collapse to one
let a=1
pretrain {   # on the header

  # before steps
  steps 1  # P
  loss f(a,   # inside the call
         # a full line inside
         b)

  # before the brace

}  # after the brace
space s = t{a} exclude t == a and   # mid-rule
   t != a
finetune { unroll 2 }  # one-line block
# at the end

"""
FORMATTED = """# header comment
spec s  # trailing on spec

# two blank lines collapse to one
let a = 1
pretrain {  # on the header
  # before steps
  steps 1  # P
  # inside the call
  # a full line inside
  loss f(a, b)

  # before the brace
}  # after the brace
# mid-rule
space s = t{a}
  exclude t == a and t != a
finetune {
  unroll 2
}  # one-line block
# at the end
"""


def test_comments_survive_formatting():
    assert format_text(COMMENTED, P) == FORMATTED
    assert format_text(FORMATTED, P) == FORMATTED


def test_comments_in_strings_are_not_comments():
    assert format_text('spec s "a # b"  # c\n', P) == 'spec s "a # b"  # c\n'


def test_empty_and_comment_only_specs():
    assert format_text("", P) == ""
    assert format_text("\n\n# only\n\n", P) == "# only\n"
    assert format_text("pretrain {\n}\n", P) == "pretrain {}\n"


# ---- the repository's specs ----------------------------------------------------------------------
REPO_SPECS = sorted([*ROOT.glob("specs/**/*.mpt"), *ROOT.glob("tests/fixtures/ir/**/*.mpt"),
                     *ROOT.glob("tests/fixtures/errors/*.mpt")])


@pytest.mark.parametrize("path", REPO_SPECS, ids=[str(p.relative_to(ROOT)) for p in REPO_SPECS])
def test_repository_specs_round_trip(path):
    text = path.read_text(encoding="utf-8")
    try:
        spec = parse(text, P)
    except SyntaxProblem:
        assert "errors" in path.parts  # only the error fixtures may hold syntax errors
        return
    roundtrip(spec)
    formatted = format_text(text, P)
    assert strip(parse(formatted, P)) == strip(spec)
    assert format_text(formatted, P) == formatted
    assert [c.text for c in trivia(formatted) if isinstance(c, Comment)] == \
        [c.text for c in trivia(text) if isinstance(c, Comment)]


@pytest.mark.parametrize("path", sorted(ROOT.glob("specs/**/*.mpt")), ids=lambda p: p.name)
def test_formatting_does_not_change_the_plan(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = path.read_text(encoding="utf-8")
    assert to_json(compile_spec(format_text(text, P), str(path))) == to_json(compile_spec(text, str(path)))


@pytest.mark.parametrize("path", sorted(ROOT.glob("specs/**/*.mpt")), ids=lambda p: p.name)
def test_shipped_specs_are_formatted(path):
    """The specs we ship are what `mptc fmt` writes (`mptc fmt specs/` fixes one that is not)."""
    text = path.read_text(encoding="utf-8")
    assert format_text(text, str(path)) == text


# ---- mptc fmt ------------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    ugly = tmp_path / "ugly.mpt"
    ugly.write_text("let  a=(1)   # keep me\n", encoding="utf-8")
    tidy = tmp_path / "tidy.mpt"
    tidy.write_text("let a = 1  # keep me\n", encoding="utf-8")
    return ugly, tidy


def test_fmt_check_lists_what_would_change_and_exits_1(files, capsys):
    ugly, tidy = files
    assert main(["fmt", "--check", str(ugly), str(tidy)]) == 1
    out, err = capsys.readouterr()
    assert out == f"would reformat {ugly}\n"
    assert err == "mptc: 1 file would be reformatted, 1 file already formatted\n"
    assert ugly.read_text(encoding="utf-8") == "let  a=(1)   # keep me\n"
    assert main(["fmt", "--check", str(tidy)]) == 0


def test_fmt_rewrites_in_place(files, capsys):
    ugly, tidy = files
    ugly.chmod(0o640)
    assert main(["fmt", str(ugly.parent)]) == 0  # a folder: its .mpt files
    assert capsys.readouterr().out == f"reformatted {ugly}\n"
    assert ugly.read_text(encoding="utf-8") == "let a = 1  # keep me\n"
    assert ugly.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in ugly.parent.iterdir()) == ["tidy.mpt", "ugly.mpt"]  # no temporary left
    assert main(["fmt", "--check", str(ugly)]) == 0


def test_fmt_syntax_error_exits_2_and_changes_nothing(files, tmp_path, capsys):
    ugly, _ = files
    bad = tmp_path / "bad.mpt"
    bad.write_text("let a =\n", encoding="utf-8")
    assert main(["fmt", str(bad), str(ugly), str(tmp_path / "missing.mpt")]) == 2
    out, err = capsys.readouterr()
    assert out == f"reformatted {ugly}\n"  # the other files are still formatted
    assert f"{bad}:1:8: error: syntax error: unexpected end of file" in err
    assert "1 | let a =" in err and "Traceback" not in err
    assert f"cannot read spec '{tmp_path / 'missing.mpt'}': no such file" in err
    assert err.endswith("mptc: 1 file reformatted, 2 files with errors\n")
    assert bad.read_text(encoding="utf-8") == "let a =\n"
    assert main(["fmt", "--check", str(bad)]) == 2


def test_fmt_keeps_the_quickstart_comments(tmp_path, capsys):
    copy = tmp_path / "q.mpt"
    copy.write_text((ROOT / "specs" / "quickstart.mpt").read_text(encoding="utf-8"), encoding="utf-8")
    main(["fmt", str(copy)])
    text = copy.read_text(encoding="utf-8")
    assert re.search(r"^  steps 10  # P: PT steps per meta-step$", text, re.M)
    assert text.startswith("# The quickstart")

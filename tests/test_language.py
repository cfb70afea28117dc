"""The vocabulary table (compiler/language.py) and the printer's precedence against the grammar: the
grammar is the one definition of the syntax, and these tests fail when anything else drifts from it."""
import re

from mptc.compiler import ast, language, printer
from mptc.compiler.parse import parser


def _rules():
    return parser().rules


def _keyword(symbol) -> str | None:
    """The literal of an anonymous keyword terminal (`"steps"`), else None."""
    for t in parser().terminals:
        if t.name == symbol.name and t.pattern.type == "str" and t.pattern.value.isidentifier():
            return t.pattern.value
    return None


def test_declaration_keywords_are_the_grammars():
    items = {r.expansion[0].name for r in _rules() if r.origin.name == "item"}  # spec_decl, data_decl, ...
    found = {_keyword(r.expansion[0]) for r in _rules() if r.origin.name in items}
    assert found == set(language.DECLARATIONS)


def test_clause_keywords_and_classes_are_the_grammars():
    clauses = {r.alias: _keyword(r.expansion[0]) for r in _rules() if r.origin.name == "clause"}
    assert set(clauses.values()) == set(language.CLAUSES)
    for alias, keyword in clauses.items():   # data_clause -> DataClause
        assert language.CLAUSES[keyword].__name__ == "".join(p.title() for p in alias.split("_"))
    assert all(set(c) <= set(language.CLAUSES) for c in language.STAGE_CLAUSES.values())
    assert set(language.STAGE_CLAUSES) == set(language.STAGES)


def test_every_ast_declaration_class_has_a_keyword():
    items = set(ast.Item.__args__)
    assert set(language.DECLARATIONS.values()) == items
    assert set(language.CLAUSES.values()) == set(ast.Clause.__args__)


LEVELS = {"expr": printer.EXPR, "sum": printer.SUM, "product": printer.PRODUCT, "unary": printer.UNARY,
          "power": printer.POWER, "postfix": printer.POSTFIX, "atom": printer.ATOM}


def test_printer_precedence_is_the_grammars():
    """Each binary operator's rule in the grammar gives its level and its operands' least levels, as the
    printer's table states them."""
    ops = {}
    for r in _rules():
        if r.origin.name in LEVELS and len(r.expansion) == 3 and r.alias in ("add", "sub", "mul", "div", "pow"):
            left, op, right = r.expansion
            literal = next(t.pattern.value for t in parser().terminals if t.name == op.name)
            ops[literal] = (LEVELS[r.origin.name], LEVELS[left.name], LEVELS[right.name])
    assert ops == printer._BINARY


def test_printer_number_pattern_is_the_grammars():
    grammar = next(t.pattern.value for t in parser().terminals if t.name == "NUMBER")
    assert re.compile(grammar).pattern == printer._NUMBER.pattern

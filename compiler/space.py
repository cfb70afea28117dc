"""AANG search spaces: the static, deterministic expansion of `space` declarations.

A space is the cartesian product of its factors' choices, in declaration order, minus every
combination that satisfies all conditions of some `exclude` rule. Each objective is named by its
choices joined with dots, e.g. `task.bert_op.bidirectional.denoise`.

    >>> from mptc.compiler.parse import parse
    >>> decl = parse("space s = a{p, q} x b{u, v} exclude a == p and b == v", "<t>").items[0]
    >>> expand(decl, []).objectives
    ('p.u', 'q.u', 'q.v')
"""
from __future__ import annotations

import itertools
import math

import attrs

from mptc.compiler import ast
from mptc.errors import NO_SPAN, DuplicateName, OutOfRange, Span, UnknownName, did_you_mean

# Far beyond AANG's spaces (hundreds of objectives); a product of a few more factors would take minutes.
MAX_COMBINATIONS = 100_000


@attrs.frozen
class Expanded:
    """The objectives of a space, and how many each exclude rule removed (rules in order: the spec's, then
    the default rules of a space over AANG's primitives, `defaults` giving (why, rule) for each of those)."""

    stages: tuple[str, ...]
    objectives: tuple[str, ...]
    removed: tuple[int, ...]
    defaults: tuple = ()
    choices: tuple = ()   # (stage, its choices) in order


def default_excludes(choices: dict) -> list[tuple[str, ast.Exclude]]:
    """(why, exclude node) for each default rule of a space whose stages are AANG's primitives
    (components/catalog_aang.py): the paper's illegal combinations."""
    from mptc.components.catalog_aang import default_rules, is_aang
    from mptc.components.registry import catalog_loaded
    catalog_loaded()
    if not is_aang(choices):
        return []
    out = []
    for why, conds in default_rules(choices):
        nodes = tuple(ast.Condition(NO_SPAN, stage, "==" if len(names) == 1 else "in",
                                    tuple(ast.Ident(NO_SPAN, n) for n in names)) for stage, names in conds)
        out.append((why, ast.Exclude(NO_SPAN, nodes)))
    return out


def _check(decl: ast.SpaceDecl, errors: list) -> dict:
    choices: dict[str, tuple[str, ...]] = {}
    for factor in decl.factors:
        if factor.stage in choices:
            errors.append(DuplicateName(factor.span, f"stage '{factor.stage}' appears twice in space '{decl.name}'"))
        names = [c.name for c in factor.choices]
        for c in factor.choices:
            if names.count(c.name) > 1:
                errors.append(DuplicateName(c.span, f"choice '{c.name}' is listed twice"))
        choices[factor.stage] = tuple(dict.fromkeys(names))
    for rule in decl.excludes:
        for cond in rule.conditions:
            _check_condition(cond, choices, errors)
    return choices


def _check_condition(cond: ast.Condition, choices: dict, errors: list) -> None:
    if cond.stage not in choices:
        at = Span(cond.span.path, cond.span.line, cond.span.col, cond.span.line, cond.span.col + len(cond.stage))
        errors.append(UnknownName(at, f"exclude names unknown stage '{cond.stage}'",
                                  hint=did_you_mean(cond.stage, choices)))
        return
    for value in cond.values:
        if value.name not in choices[cond.stage]:
            errors.append(UnknownName(value.span, f"'{value.name}' is not a choice of {cond.stage}",
                                      hint=did_you_mean(value.name, choices[cond.stage])))


def _holds(cond: ast.Condition, combo: dict) -> bool:
    values = {v.name for v in cond.values}
    if cond.stage not in combo:
        return False
    return (combo[cond.stage] in values) if cond.op != "!=" else (combo[cond.stage] not in values)


def expand(decl: ast.SpaceDecl, errors: list) -> Expanded:
    """All objectives of a space after exclusions, in product order."""
    choices = _check(decl, errors)
    stages = tuple(choices)
    defaults = tuple(default_excludes(choices))
    rules = (*decl.excludes, *(rule for _, rule in defaults))
    kept, removed = [], [0] * len(rules)
    size = math.prod(len(c) for c in choices.values())
    if size > MAX_COMBINATIONS:
        errors.append(OutOfRange(decl.name_span, f"space '{decl.name}' has {size} combinations, "
                                 f"more than the {MAX_COMBINATIONS} supported"))
        return Expanded(stages, (), tuple(removed), defaults, tuple(choices.items()))
    for combo in itertools.product(*choices.values()):
        named = dict(zip(stages, combo))
        hit = next((i for i, r in enumerate(rules) if all(_holds(c, named) for c in r.conditions)), None)
        if hit is None:
            kept.append(".".join(combo))
        else:
            removed[hit] += 1
    return Expanded(stages, tuple(kept), tuple(removed), defaults, tuple(choices.items()))

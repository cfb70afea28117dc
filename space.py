"""Search spaces from Python (AANG, Dery et al. 2023): `product` of stages' choices, with exclusions.

An exclusion is either a rule that reads like the language's `exclude` (`when(output="end_task",
represent=["left_to_right", "right_to_left"])`, `not_(c)` for `!=`), or any Python predicate over a
combination (`lambda c: c.data == "task" and c.output != "end_task"`). A predicate is evaluated on every
combination and rendered as the fewest `exclude` rules this module finds that remove exactly the same
combinations, so the .mpt text and `mptc space` agree with Python.

    >>> s = product(data=["task", "domain"], output=["denoise", "end_task"],
    ...             exclude=[lambda c: c.data == "domain" and c.output == "end_task"])
    >>> s.objectives
    ('task.denoise', 'task.end_task', 'domain.denoise')
    >>> from mptc.compiler.printer import print_expr
    >>> print(print_expr(s.decl("aux")))
    space aux = data{task, domain} x output{denoise, end_task}
    exclude data == domain and output == end_task
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Mapping, Sequence, Union

import attrs

from mptc.compiler import ast
from mptc.errors import NO_SPAN as _S

__all__ = ["Combination", "Product", "Rule", "not_", "product", "when"]


class Combination(dict):
    """One combination of a space, stage -> choice; read a stage as `c.output` or `c["output"]`."""

    def __getattr__(self, stage: str) -> str:
        try:
            return self[stage]
        except KeyError:
            raise AttributeError(f"no stage '{stage}' (stages: {', '.join(self)})") from None

    @property
    def objective(self) -> str:
        """The objective's name, choices joined with dots."""
        return ".".join(self.values())


@attrs.frozen
class Not:
    """`stage != choice` (or not in several choices) inside `when`."""

    choices: tuple[str, ...]


def not_(*choices: str) -> Not:
    """A condition of `when` that holds when the stage is none of `choices`: `when(output=not_("end_task"))`."""
    return Not(tuple(choices))


@attrs.frozen
class Rule:
    """An exclude rule: stage -> the choices it matches (all conditions must hold), `!=` where negated."""

    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (stage, op, choices), op "==", "!=", "in"

    def __call__(self, c: Mapping[str, str]) -> bool:
        return all((c[s] in v) != (op == "!=") for s, op, v in self.conditions)


def when(**conditions: str | Sequence[str] | Not) -> Rule:
    """A rule excluding the combinations whose stages match every condition: a choice (`==`), a list of
    choices (`in`), or `not_(choice)` (`!=`).

    >>> when(represent=["l2r", "r2l"], output="end_task").conditions
    (('represent', 'in', ('l2r', 'r2l')), ('output', '==', ('end_task',)))
    """
    if not conditions:
        raise ValueError("when() needs at least one stage=choice condition")
    out = []
    for stage, value in conditions.items():
        if isinstance(value, Not):
            out += [(stage, "!=", (v,)) for v in value.choices]
        elif isinstance(value, str):
            out.append((stage, "==", (value,)))
        else:
            out.append((stage, "in", tuple(value)))
    return Rule(tuple(out))


Exclusion = Union[Rule, Callable[[Combination], bool]]


@attrs.frozen
class Product:
    """A space: the cartesian product of its stages' choices, in order, minus the exclusions."""

    factors: tuple[tuple[str, tuple[str, ...]], ...]
    exclusions: tuple[Exclusion, ...] = ()

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(stage for stage, _ in self.factors)

    def exclude(self, *rules: Exclusion) -> "Product":
        """The same space with more exclusions."""
        return attrs.evolve(self, exclusions=self.exclusions + rules)

    def combinations(self) -> Iterable[Combination]:
        """Every combination before exclusions, in product order."""
        for combo in itertools.product(*(choices for _, choices in self.factors)):
            yield Combination(zip(self.stages, combo))

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives' names, in order, as the compiler expands the rendered declaration."""
        from mptc.compiler.space import expand
        return expand(self.decl("_"), []).objectives

    def __len__(self) -> int:
        return len(self.objectives)

    def decl(self, name: str) -> ast.SpaceDecl:
        """The `space NAME = ...` declaration node (predicates turned into exclude rules)."""
        factors = tuple(ast.Factor(_S, s, _idents(c)) for s, c in self.factors)
        excludes = []
        for ex in self.exclusions:
            rules = [ex] if isinstance(ex, Rule) else _rules_of(ex, self)
            excludes += [_exclude_node(r) for r in rules]
        return ast.SpaceDecl(_S, name, factors, tuple(excludes), _S)


def product(*, exclude: Iterable[Exclusion] = (), **stages: Sequence[str]) -> Product:
    """The space of every combination of the stages' choices (stages in keyword order), less `exclude`.

    >>> len(product(data=["a", "b"], transform=["x", "y", "z"]))
    6
    """
    if not stages:
        raise ValueError("product() needs at least one stage=[choices]")
    factors = []
    for stage, choices in stages.items():
        if isinstance(choices, str) or not choices:
            raise ValueError(f"stage '{stage}' needs a non-empty list of choices, got {choices!r}")
        factors.append((stage, tuple(choices)))
    return Product(tuple(factors), tuple(exclude))


def _idents(names) -> tuple[ast.Ident, ...]:
    return tuple(ast.Ident(_S, n) for n in names)


def _exclude_node(rule: Rule) -> ast.Exclude:
    conds = tuple(ast.Condition(_S, s, op, _idents(v)) for s, op, v in rule.conditions)
    return ast.Exclude(_S, conds)


def _rules_of(predicate: Callable[[Combination], bool], space: Product) -> list[Rule]:
    """Exclude rules removing exactly the combinations the predicate holds for.

    Each removed combination starts as its own box (one choice per stage); boxes that agree on every
    stage but one merge along it, stage by stage, so a predicate such as `a in {p, q} and b == r`
    comes back as the one rule it is. A condition matching every choice of its stage is dropped."""
    stages = space.stages
    boxes = [tuple((v,) for v in c.values()) for c in space.combinations() if predicate(c)]
    for k in range(len(stages)):
        merged: dict = {}
        for box in boxes:
            values = merged.setdefault(box[:k] + box[k + 1:], [])
            values += [v for v in box[k] if v not in values]
        boxes = [key[:k] + (tuple(vals),) + key[k:] for key, vals in merged.items()]
    return [_rule_of_box(box, space.factors) for box in boxes]


def _rule_of_box(box, factors) -> Rule:
    conds = []
    for (stage, choices), values in zip(factors, box):
        if len(values) == len(choices):
            continue                                    # every choice: no condition needed
        ordered = tuple(c for c in choices if c in values)  # the space's order, whatever the predicate's
        rest = [c for c in choices if c not in values]
        if len(ordered) == 1:
            conds.append((stage, "==", ordered))
        elif len(rest) == 1:
            conds.append((stage, "!=", tuple(rest)))
        else:
            conds.append((stage, "in", ordered))
    if not conds:                                       # the predicate removes everything
        stage, choices = factors[0]
        conds.append((stage, "in", choices))
    return Rule(tuple(conds))

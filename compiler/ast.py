"""The abstract syntax of a .mpt spec: one frozen attrs class per concept, a span first, no behaviour.

    >>> from mptc.compiler.parse import parse
    >>> spec = parse('let a = 2 * b', "x.mpt")
    >>> type(spec.items[0]).__name__, spec.items[0].name
    ('LetDecl', 'a')
"""
from __future__ import annotations

from typing import Union

import attrs

from mptc.errors import Span

frozen = attrs.frozen(kw_only=False)


# ---- expressions ---------------------------------------------------------------------------------
@frozen
class Number:
    """A numeric literal; `text` keeps the spelling (1e-3 stays 1e-3 when printed)."""

    span: Span
    value: float | int
    text: str


@frozen
class String:
    """A string literal, unquoted."""

    span: Span
    value: str


@frozen
class Ref:
    """A (possibly dotted) name: `x`, `ft.train`, `synthetic.multitask`."""

    span: Span
    parts: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return self.parts[0] if len(self.parts) == 1 else ".".join(self.parts)


@frozen
class Kwarg:
    """`name: value` inside a call."""

    span: Span
    name: str
    value: "Expr"


@frozen
class Call:
    """`func(args..., key: value...)`."""

    span: Span
    func: Ref
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]


@frozen
class BinOp:
    """`left op right` for op in + - * / **."""

    span: Span
    op: str
    left: "Expr"
    right: "Expr"


@frozen
class Neg:
    """`-operand`."""

    span: Span
    operand: "Expr"


@frozen
class Index:
    """`target[index]`."""

    span: Span
    target: "Expr"
    index: "Expr"


@frozen
class ListExpr:
    """`[a, b, ...]`."""

    span: Span
    items: tuple["Expr", ...]


Expr = Union[Number, String, Ref, Call, BinOp, Neg, Index, ListExpr]


@frozen
class Ident:
    """A bare name in a list (`update a, b`, `against pretrain`), kept with its own span."""

    span: Span
    name: str


# ---- declarations --------------------------------------------------------------------------------
@frozen
class SpecHeader:
    """`spec NAME "description"`."""

    span: Span
    name: str
    doc: str | None


@frozen
class ImportDecl:
    """`import "file.py"` (a String: a path relative to the spec's folder) or `import package.module` (a Ref)."""

    span: Span
    source: Union[String, Ref]


@frozen
class SplitPart:
    """`train 0.5` in a data declaration's split."""

    span: Span
    name: str
    fraction: Expr


@frozen
class DataDecl:
    """`data NAME = source(...) [split a f, b f]`."""

    span: Span
    name: str
    source: Call
    split: tuple[SplitPart, ...]
    name_span: Span  # the name alone, where errors about the declaration point


@frozen
class ModelDecl:
    """`model NAME = component(...)`: a network whose parameters pre-training shapes."""

    span: Span
    name: str
    component: Call
    name_span: Span  # the name alone, where errors about the declaration point


@frozen
class HeadDecl:
    """`head NAME = component(...)`: a task head, input size inferred from where it is applied."""

    span: Span
    name: str
    component: Call
    name_span: Span  # the name alone, where errors about the declaration point


@frozen
class ScalarType:
    """`scalar`."""

    span: Span


@frozen
class VectorType:
    """`vector[n]`."""

    span: Span
    length: int


@frozen
class NetworkType:
    """`network component(...)`: a meta-parameter that is a whole network."""

    span: Span
    component: Call


@frozen
class FactoredType:
    """`factored(space)`: AANG's factored weights over a search space."""

    span: Span
    space: str


MetaType = Union[ScalarType, VectorType, NetworkType, FactoredType]


@frozen
class MetaDecl:
    """`meta NAME: type [= init] [in [lo, hi]] [rate R]`."""

    span: Span
    name: str
    type: MetaType
    init: Expr | None
    bounds: tuple[Expr, Expr] | None
    name_span: Span  # the name alone, where errors about the declaration point
    rate: Expr | None = None  # `rate R`: its own meta-optimizer learning rate


@frozen
class LetDecl:
    """`let NAME = expr`."""

    span: Span
    name: str
    value: Expr
    name_span: Span  # the name alone, where errors about the declaration point


# ---- stages --------------------------------------------------------------------------------------
@frozen
class DataClause:
    """`data ref [batch n]`."""

    span: Span
    ref: Ref
    batch: int | None


@frozen
class LossClause:
    """`loss expr`."""

    span: Span
    expr: Expr


@frozen
class OptimizerClause:
    """`optimizer name(...)`."""

    span: Span
    call: Call


@frozen
class StepsClause:
    """`steps n`: pre-training steps per meta-step (P)."""

    span: Span
    n: int


@frozen
class UnrollClause:
    """`unroll K [update a, b]`: fine-tuning steps differentiated through, and what they update."""

    span: Span
    k: int
    update: tuple[Ident, ...]


@frozen
class AugmentClause:
    """`augment name(...)`: an augmentation applied to the stage's inputs."""

    span: Span
    call: Call


@frozen
class SampleClause:
    """`sample n per step`: auxiliary objectives sampled per step."""

    span: Span
    n: int


@frozen
class WeightsClause:
    """`weights expr`: the weights of auxiliary objectives."""

    span: Span
    expr: Expr


@frozen
class EndTaskWeightClause:
    """`end_task_weight expr`."""

    span: Span
    expr: Expr


Clause = Union[DataClause, LossClause, OptimizerClause, StepsClause, UnrollClause, AugmentClause,
               SampleClause, WeightsClause, EndTaskWeightClause]


@frozen
class Stage:
    """`pretrain { ... }`, `finetune { ... }` or `auxiliary NAME { ... }`."""

    span: Span
    kind: str
    name: str | None
    clauses: tuple[Clause, ...]


# ---- search spaces -------------------------------------------------------------------------------
@frozen
class Factor:
    """`stage{choice, ...}` in a space."""

    span: Span
    stage: str
    choices: tuple[Ident, ...]


@frozen
class Condition:
    """`stage in {a, b}`, `stage == a` or `stage != a` inside an exclude rule."""

    span: Span
    stage: str
    op: str
    values: tuple[Ident, ...]


@frozen
class Exclude:
    """`exclude cond and cond ...`."""

    span: Span
    conditions: tuple[Condition, ...]


@frozen
class SpaceDecl:
    """`space NAME = f x f x ... [exclude ...]`."""

    span: Span
    name: str
    factors: tuple[Factor, ...]
    excludes: tuple[Exclude, ...]
    name_span: Span  # the name alone, where errors about the declaration point


# ---- the meta level ------------------------------------------------------------------------------
@frozen
class ObjectiveDecl:
    """`meta_objective expr on data.split`."""

    span: Span
    expr: Expr
    on: Ref


@frozen
class HgEntry:
    """`stage: estimator` in the hypergradient declaration."""

    span: Span
    stage: str
    estimator: Expr


@frozen
class HypergradientDecl:
    """`hypergradient stage: est, ... [check every n]`."""

    span: Span
    entries: tuple[HgEntry, ...]
    check_every: int | None


@frozen
class MetaOptimizerDecl:
    """`meta_optimizer name(...)`."""

    span: Span
    call: Call


@frozen
class Option:
    """`key value` in the train declaration."""

    span: Span
    key: str
    value: Expr


@frozen
class TrainDecl:
    """`train key value ...`."""

    span: Span
    options: tuple[Option, ...]


@frozen
class EvaluateDecl:
    """`evaluate protocol(...) [against baseline, ...]`."""

    span: Span
    call: Call
    against: tuple[Ident, ...]


Item = Union[SpecHeader, ImportDecl, DataDecl, ModelDecl, HeadDecl, MetaDecl, LetDecl, Stage, SpaceDecl,
             ObjectiveDecl, HypergradientDecl, MetaOptimizerDecl, TrainDecl, EvaluateDecl]


@frozen
class Spec:
    """A whole .mpt file."""

    span: Span
    items: tuple[Item, ...]

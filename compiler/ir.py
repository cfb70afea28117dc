"""The IR plan: what the runtime executes. Frozen attrs, no behaviour, no syntax, JSON-serialisable.

    >>> to_json(Const(2.0))
    {'node': 'Const', 'value': 2.0}
"""
from __future__ import annotations

from typing import Any, Union

import attrs

frozen = attrs.frozen


# ---- expressions ---------------------------------------------------------------------------------
@frozen
class Const:
    """A number (or list of numbers)."""

    value: Any


@frozen
class Input:
    """The stage's batch: `x` or `y`."""

    name: str


@frozen
class MetaRef:
    """A meta-parameter, raw (before any `let` transform)."""

    name: str


@frozen
class LetRef:
    """A named `let` expression."""

    name: str


@frozen
class Apply:
    """A model or head applied to an input."""

    module: str
    arg: "IExpr"


@frozen
class Fn:
    """A function of the loss vocabulary (bce, mean, sigmoid, ...)."""

    name: str
    args: tuple["IExpr", ...]


@frozen
class Bin:
    """An arithmetic operation."""

    op: str
    left: "IExpr"
    right: "IExpr"


@frozen
class Neg:
    """Negation."""

    operand: "IExpr"


@frozen
class Index:
    """Indexing."""

    target: "IExpr"
    index: "IExpr"


@frozen
class Augmented:
    """`body` evaluated with the batch's x replaced by `augment(x, **args)` (the `augment` clause).

    `args` maps each parameter to a constant or, for tensor parameters, an IR expression (meta-parameters,
    a meta network of the raw x, ...)."""

    augment: str
    args: dict
    body: "IExpr"


@frozen
class Augment:
    """`augment(input, **args)` inside an expression (e.g. `warp(x, strength: s(x))`): one view of the
    input, with its own noise stream; `args` as in `Augmented`."""

    augment: str
    args: dict
    input: "IExpr"


@frozen
class Norm:
    """`l2(module)`: the sum of the squares of a model's or head's parameters."""

    module: str


@frozen
class AuxTerm:
    """The auxiliary block's term of the PT loss: sum_k w~_k L_k over the objectives sampled for the batch
    (plan.auxiliary says which space, weights and heads; runtime/aang.py computes it)."""

    space: str


IExpr = Union[Const, Input, MetaRef, LetRef, Apply, Fn, Bin, Neg, Index, Augmented, Augment, Norm, AuxTerm]


# ---- the plan ------------------------------------------------------------------------------------
@frozen
class Component:
    """A registry component with checked, defaulted arguments (nested components for `call:` params)."""

    name: str
    args: dict


@frozen
class DataSource:
    """A dataset, its splits (name, fraction) and the shapes of x and y (feature dims, batch left out)."""

    name: str
    source: Component
    splits: tuple[tuple[str, float], ...]
    x_dim: int | None
    y_dim: int | None


@frozen
class Module:
    """A model (`role` model) or a head; `in_dim` inferred from where it is applied."""

    name: str
    role: str
    component: Component
    in_dim: Any


@frozen
class MetaParam:
    """A meta-parameter: kind scalar, vector or network."""

    name: str
    kind: str
    size: int
    init: float
    bounds: tuple[float, float] | None
    network: Component | None
    in_dim: Any = None  # a network's inferred input: features, or the per-example shape (channels, ...)
    space: str | None = None  # a factored meta's space: size = objectives + every stage's choices
    rate: float | None = None  # its own meta-optimizer learning rate (`meta ... rate R`), else the optimizer's


@frozen
class Space:
    """An AANG search space, expanded: its objectives' names in order (`mptc space` lists them)."""

    name: str
    objectives: tuple[str, ...]
    stages: tuple[str, ...] = ()


@frozen
class AuxiliaryPlan:
    """An `auxiliary SPACE { ... }` block (AANG): the space's objectives (`data.transform.represent.output`),
    `extra` objectives the evaluation's single-objective baselines train (outside the space), the encoder
    they share (the model the pretrain loss applies to x), a head per output (output, head module), the
    weights over the objectives ([objectives]), the end task's weight and loss (the pretrain loss), its
    data, the objectives sampled per PT step, and the in-domain data (the block's data clause), if any."""

    space: str
    objectives: tuple[str, ...]
    extra: tuple[str, ...]
    encoder: str
    heads: tuple[tuple[str, str], ...]
    weights: IExpr
    end_task_weight: IExpr
    end_task_loss: IExpr
    end_task_data: str
    sample: int
    data: DataRef | None


@frozen
class Let:
    """A named expression; `meta_only` when it depends on meta-parameters alone (a transform)."""

    name: str
    expr: IExpr
    meta_only: bool


@frozen
class DataRef:
    """A dataset split read in batches."""

    dataset: str
    split: str | None
    batch: int


@frozen
class PretrainPlan:
    """The pretrain stage: `steps` (P) PT steps per meta-step; `trains` the modules its optimizer updates."""

    data: DataRef
    loss: IExpr
    optimizer: Component
    steps: int
    trains: tuple[str, ...]


@frozen
class FinetunePlan:
    """The finetune stage: `unroll` (K) differentiable steps per meta-step on the modules in `trains`."""

    data: DataRef
    loss: IExpr
    optimizer: Component
    unroll: int
    trains: tuple[str, ...]


@frozen
class Objective:
    """The meta-objective and the split it is measured on."""

    expr: IExpr
    data: DataRef


@frozen
class Estimator:
    """How the hypergradient passes through one stage."""

    stage: str
    method: Component


@frozen
class Train:
    """The outer loop's settings."""

    meta_steps: int
    warmup: int
    seed: int
    device: str
    log_every: int
    max_nonfinite: int
    reset_every: int
    dtype: str  # of the modules, meta-parameters and data: float32 or float64
    checkpoint_every: int = 0  # meta-steps between resumable checkpoints (runtime/checkpoint.py)
    precision: str = "fp32"    # bf16: losses' forward passes under autocast (runtime/loop.py Trainer)


@frozen
class Evaluate:
    """The evaluation protocol and the baselines it compares against."""

    protocol: Component
    baselines: tuple[str, ...]


@frozen
class Plan:
    """A whole compiled spec."""

    name: str
    doc: str
    datasets: tuple[DataSource, ...]
    modules: tuple[Module, ...]
    metas: tuple[MetaParam, ...]
    spaces: tuple[Space, ...]
    lets: tuple[Let, ...]
    pretrain: PretrainPlan
    finetune: FinetunePlan
    objective: Objective
    estimators: tuple[Estimator, ...]
    meta_optimizer: Component
    train: Train
    evaluate: Evaluate | None
    hg_check_every: int | None = None
    imports: tuple[str, ...] = ()  # the user code it needs: files (absolute .py paths) and modules (names)
    auxiliary: AuxiliaryPlan | None = None


def to_json(node) -> Any:
    """The IR as plain JSON values, each node tagged with its class name."""
    if attrs.has(type(node)):
        out = {"node": type(node).__name__}
        out.update({f.name: to_json(getattr(node, f.name)) for f in attrs.fields(type(node))})
        return out
    if isinstance(node, (tuple, list)):
        return [to_json(v) for v in node]
    if isinstance(node, dict):
        return {k: to_json(v) for k, v in node.items()}
    return node

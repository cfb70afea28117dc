"""The built-in components: declared parameters, shape rules and where each implementation lives.

Torch-free on purpose: `mptc check` validates a spec against this table without importing torch.
A user adds a component the same way, e.g. `MODELS.register("mynet", [Param(...)], target=fn)`.

    >>> from mptc.runtime.registry import MODELS
    >>> [p.name for p in MODELS.get("mlp").params][:2]
    ['hidden', 'in']
"""
from __future__ import annotations

from mptc.runtime.registry import (BASELINES, DATASETS, ESTIMATORS, FUNCTIONS, HEADS, MODELS, OPTIMIZERS,
                                   PROTOCOLS, SOLVERS, Param)

B = "B"  # the batch dimension in shapes


class ShapeProblem(ValueError):
    """Raised by a shape rule; the checker turns it into a ShapeMismatch at the call's span."""


def _features(in_shape) -> int | None:
    if in_shape is None:
        return None
    if len(in_shape) != 2:
        raise ShapeProblem(f"expects inputs of shape [batch, features], got {_fmt(in_shape)}")
    return in_shape[1]


def _fmt(shape) -> str:
    return "[" + ", ".join("batch" if d == B else str(d) for d in shape) + "]"


def _dense(out_key):
    def rule(args, in_shape):
        declared, got = args.get("in"), _features(in_shape)
        if declared is not None and got is not None and declared != got:
            raise ShapeProblem(f"declared in: {declared} but its input has {got} features")
        return (B, out_key(args))
    return rule


# ---- models and heads ----------------------------------------------------------------------------
_ACTS = ("relu", "tanh", "gelu", "sigmoid", "identity")
MODELS.register("mlp", [
    Param("hidden", "ints", min=1, doc="widths of the hidden layers; the last is the feature size"),
    Param("in", "int", None, min=1, doc="input features (inferred from the data when left out)"),
    Param("activation", "choice", "relu", choices=_ACTS),
    Param("dropout", "float", 0.0, min=0, max=1),
], target="mptc.runtime.models:mlp", doc="A multi-layer perceptron, activation after every layer.",
    shape=_dense(lambda a: a["hidden"][-1]))
MODELS.register("linear", [Param("out", "int", min=1), Param("in", "int", None, min=1),
                           Param("bias", "bool", True)],
                target="mptc.runtime.models:linear", doc="One linear map.", shape=_dense(lambda a: a["out"]))
HEADS.register("linear", [Param("out", "int", min=1), Param("bias", "bool", True)],
               target="mptc.runtime.models:linear", doc="A linear task head.", shape=_dense(lambda a: a["out"]))
HEADS.register("mlp", [Param("hidden", "ints", min=1), Param("out", "int", min=1),
                       Param("activation", "choice", "relu", choices=_ACTS)],
               target="mptc.runtime.models:mlp_head", doc="An MLP head.", shape=_dense(lambda a: a["out"]))


# ---- data ----------------------------------------------------------------------------------------
def _multitask_shape(args, _):
    return {"x": (B, args["dim"]), "y": (B, args["tasks"])}


def _multitask_ft_shape(args, _):
    return {"x": args["of"]["x"], "y": (B, args["tasks"])}


DATASETS.register("synthetic.multitask", [
    Param("examples", "int", min=2), Param("dim", "int", min=1), Param("tasks", "int", min=1),
    Param("related", "int", min=0), Param("adversarial", "int", 0, min=0),
    Param("factors", "int", 8, min=2), Param("related_factors", "int", 3, min=1),
    Param("noise", "float", 0.1, min=0), Param("seed", "int", 0),
], target="mptc.runtime.datasets:synthetic_multitask", shape=_multitask_shape,
    doc="Multi-label PT tasks over planted latent factors; info['relevant'] marks the FT-related ones.")
DATASETS.register("synthetic.multitask_ft", [
    Param("of", "dataset"), Param("examples", "int", min=2), Param("tasks", "int", min=1),
    Param("seed", "int", 0),
], target="mptc.runtime.datasets:synthetic_multitask_ft", shape=_multitask_ft_shape,
    doc="The FT companion of a synthetic.multitask set: new tasks on its related factors.")


# ---- the loss-expression vocabulary --------------------------------------------------------------
def _same(args, shapes):
    return shapes[0]


def broadcast(a, b):
    """numpy broadcasting of two shapes ("B" only matches "B" or 1); None when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def _pair(args, shapes):
    a, b = shapes
    if a is None or b is None:
        return a if a is not None else b
    out = broadcast(a, b)
    if out is None:
        raise ShapeProblem(f"cannot compare shapes {_fmt(a)} and {_fmt(b)}")
    return out


def _scalar(args, shapes):
    return ()


def _per_example(args, shapes):
    return None if shapes[0] is None else shapes[0][:1]


_T = Param("input", "tensor")
for _name in ("sigmoid", "softmax", "log_softmax", "exp", "log", "tanh", "relu", "abs", "softplus", "sqrt"):
    FUNCTIONS.register(_name, [_T], target=f"mptc.runtime.functions:{_name}", shape=_same)
for _name, _doc in (("bce", "binary cross-entropy with logits, per element"),
                    ("mse", "squared error, per element")):
    FUNCTIONS.register(_name, [Param("logits", "tensor"), Param("target", "tensor")],
                       target=f"mptc.runtime.functions:{_name}", shape=_pair, doc=_doc)
FUNCTIONS.register("ce", [Param("logits", "tensor"), Param("target", "tensor")],
                   target="mptc.runtime.functions:ce", shape=_per_example,
                   doc="softmax cross-entropy against class indices, per example")
for _name in ("mean", "sum"):
    FUNCTIONS.register(_name, [_T], target=f"mptc.runtime.functions:{_name}", shape=_scalar)


# ---- optimizers ----------------------------------------------------------------------------------
_LR = Param("lr", "float", min=0, min_exclusive=True)
OPTIMIZERS.register("sgd", [_LR, Param("momentum", "float", 0.0, min=0, max=1),
                            Param("weight_decay", "float", 0.0, min=0)],
                    target="mptc.runtime.optim:sgd", doc="SGD with optional heavy-ball momentum.")
OPTIMIZERS.register("adam", [Param("lr", "float", 1e-3, min=0, min_exclusive=True),
                             Param("beta1", "float", 0.9, min=0, max=1), Param("beta2", "float", 0.999, min=0, max=1),
                             Param("eps", "float", 1e-8, min=0, min_exclusive=True),
                             Param("weight_decay", "float", 0.0, min=0)],
                    target="mptc.runtime.optim:adam", doc="Adam (bias-corrected).")


# ---- hypergradient estimators and their linear solvers -------------------------------------------
SOLVERS.register("neumann", [Param("terms", "int", 1, min=0),
                             Param("scale", "float", None, min=0, min_exclusive=True,
                                   doc="alpha; defaults to the PT learning rate")],
                 target="mptc.runtime.solvers:neumann",
                 doc="p = alpha * sum_{j<=J} (I - alpha H)^j v, a truncated Neumann series for H^-1 v.")
SOLVERS.register("cg", [Param("iters", "int", 20, min=1), Param("damping", "float", 0.0, min=0),
                        Param("tol", "float", 1e-10, min=0)],
                 target="mptc.runtime.solvers:cg", doc="Conjugate gradient on (H + damping I) p = v.")
SOLVERS.register("identity", [], target="mptc.runtime.solvers:identity",
                 doc="H^-1 ~ I: the first-order (T1-T2 / DARTS) form.")
ESTIMATORS.register("ift", [Param("solver", "call:solver", "neumann"),
                            Param("hessian", "choice", "all", choices=("all", "encoder"))],
                    target="mptc.runtime.estimators:ift",
                    doc="Implicit function theorem through the PT stage: -v^T H^-1 d2L_PT/dtheta dphi.")
ESTIMATORS.register("unroll", [], target="mptc.runtime.estimators:unroll_ft",
                    doc="Exact backprop through the FT stage's K unrolled steps.")
ESTIMATOR_STAGES = {"ift": ("pretrain",), "unroll": ("finetune",)}
ESTIMATOR_DEFAULTS = {"pretrain": "ift", "finetune": "unroll"}


# ---- evaluation ----------------------------------------------------------------------------------
PROTOCOLS.register("finetune", [
    Param("epochs", "int", 50, min=1), Param("metric", "choice", "auroc", choices=("auroc", "accuracy")),
    Param("seeds", "int", 5, min=1), Param("lr", "float", 1e-3, min=0, min_exclusive=True),
    Param("batch", "int", 128, min=1), Param("mode", "choice", "full", choices=("full", "linear")),
    Param("patience", "int", 10, min=1),
], target="mptc.runtime.evaluate:finetune_evaluate",
    doc="Fine-tune the pre-trained encoder with a fresh head per seed, early-stopped on FT-val.")
BASELINES.register("no_pretrain", [], target="mptc.runtime.executor:no_pretrain",
                   doc="The encoder at its initialisation.")
BASELINES.register("pretrain", [], target="mptc.runtime.executor:plain_pretrain",
                   doc="The same PT budget with the meta-parameters fixed at their initial values.")

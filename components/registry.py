"""Name -> component registries: the extension points of mptc. Torch-free, so the compiler can check
specs against the declared parameters without importing the runtime's heavy modules.

A component declares its parameters; its implementation is a "module:attr" path loaded on first use
(or any callable, for a user's own component).

    >>> from mptc.components.registry import Registry, Param
    >>> acts = Registry("activation")
    >>> _ = acts.register("relu", [Param("inplace", "bool", False)], target="torch.nn:ReLU")
    >>> acts.names()
    ['relu']
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import attrs

REQUIRED = object()  # the default of a parameter that must be given


@attrs.frozen
class Param:
    """A declared parameter: `kind` is one of int, float, bool, str, choice, ints, floats, dataset,
    path (an existing file or folder), call, any."""

    name: str
    kind: str
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    min_exclusive: bool = False
    doc: str = ""
    compile_only: bool = False  # read by the checker alone (e.g. `in`, checked against the data): not passed on


@attrs.frozen
class Component:
    """One registry entry."""

    kind: str
    name: str
    params: tuple[Param, ...]
    target: str | Callable
    doc: str = ""
    shape: Callable | None = None  # (args: dict, in_shape) -> out_shape, for compile-time shape checks
    traits: tuple[str, ...] = ()   # what the checker needs to know: an estimator's stages, a protocol's "baselines"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def load(self) -> Callable:
        """The implementation (imports its module on first use), its signature checked against the
        declaration the first time (`signature_problems`)."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        if (self.kind, self.name, self.target) not in _VALIDATED:
            _raise_on(self, signature_problems(self, fn))
            _VALIDATED.add((self.kind, self.name, self.target))
        return fn

    def runtime_args(self, args: dict) -> dict:
        """The checked arguments the implementation receives: all but the compile-only ones."""
        return {k: v for k, v in args.items() if not getattr(self.param(k), "compile_only", False)}


# What an implementation receives besides its declared parameters, by kind, and which callable of an
# implementation object the declaration describes (an augmentation's `apply` after `x, eps`).
CONTEXT = {"model": ("in_dim",), "head": ("in_dim",), "augmentation": 2, "baseline": ("trainer",),
           "protocol": ("trainer", "method", "state", "train_s", "baselines")}
_CALLABLE = {"augmentation": "apply"}
_VALIDATED: set = set()


class DeclarationError(TypeError):
    """A component's declared parameters disagree with its implementation's signature."""


def signature_problems(comp: "Component", fn) -> list[str]:
    """How `fn`'s signature disagrees with `comp`'s declaration: the same names (besides the kind's
    CONTEXT), the same defaults where both give one, and no `**kwargs` that would swallow a parameter.
    Functions of the loss vocabulary take their declared parameters positionally.

        >>> def mlp(hidden, in_dim, activation="tanh"): ...
        >>> comp = Component("model", "mlp", (Param("hidden", "ints"), Param("activation", "str", "relu")), mlp)
        >>> signature_problems(comp, mlp)
        ["'activation': declared default 'relu', the implementation's 'tanh'"]
    """
    fn = getattr(fn, _CALLABLE.get(comp.kind, ""), fn)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):                   # a builtin (torch.sigmoid): nothing to compare
        return [] if comp.kind == "function" else [f"{fn!r} has no signature to check"]
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return ["the implementation takes **kwargs: a declared parameter could be dropped silently"]
    if comp.kind == "function":
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        n = len(comp.params)
        return [] if len(positional) == n else [f"declares {n} inputs, the implementation takes {len(positional)}"]
    declared = {p.name: p for p in comp.params if not p.compile_only}
    context = CONTEXT.get(comp.kind, ())
    names = list(params)
    taken = names[context:] if isinstance(context, int) else [n for n in names if n not in context]
    problems = [f"'{n}' is declared but the implementation does not take it" for n in declared if n not in taken]
    problems += [f"the implementation takes '{n}', which is not declared" for n in taken if n not in declared
                 and params[n].default is inspect.Parameter.empty]
    for name, p in declared.items():
        given = params.get(name)
        if given is None or given.default is inspect.Parameter.empty or p.default is REQUIRED:
            continue
        if p.kind.startswith("call:"):                  # declared by name, received built: nothing to compare
            continue
        if _norm(given.default) != _norm(p.default):
            problems.append(f"'{name}': declared default {p.default!r}, the implementation's {given.default!r}")
    return problems


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _raise_on(comp: "Component", problems: list[str]) -> None:
    if problems:
        raise DeclarationError(f"{comp.kind} '{comp.name}' ({comp.target if isinstance(comp.target, str) else ''}"
                               f"): " + "; ".join(problems))


class Registry:
    """name -> Component for one kind of component (models, heads, datasets, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Component] = {}

    def register(self, name: str, params=(), target: str | Callable | None = None, doc: str = "",
                 shape: Callable | None = None, traits: tuple[str, ...] = ()):
        """Adds an entry; used directly or as a decorator over the implementation."""
        def add(fn):
            comp = Component(self.kind, name, tuple(params), target or fn, doc, shape, tuple(traits))
            if callable(comp.target):                    # a user's own component: checked as it registers
                _raise_on(comp, signature_problems(comp, comp.target))
            self._entries[name] = comp
            return fn
        return add(target) if target is not None else add

    def get(self, name: str) -> Component | None:
        return self._entries.get(name)

    def entries(self) -> list[Component]:
        return [self._entries[n] for n in self.names()]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS = Registry("model")
HEADS = Registry("head")
DATASETS = Registry("dataset")
OPTIMIZERS = Registry("optimizer")
FUNCTIONS = Registry("function")      # what loss expressions may call: bce, mean, sigmoid, ...
ESTIMATORS = Registry("estimator")    # hypergradient estimators per stage
SOLVERS = Registry("solver")          # linear solvers inside ift(...)
PROTOCOLS = Registry("protocol")      # evaluation protocols
BASELINES = Registry("baseline")
AUGMENTATIONS = Registry("augmentation")  # differentiable input transforms of the `augment` clause

ALL = {r.kind: r for r in (MODELS, HEADS, DATASETS, OPTIMIZERS, FUNCTIONS, ESTIMATORS, SOLVERS,
                           PROTOCOLS, BASELINES, AUGMENTATIONS)}


def catalog_loaded() -> None:
    """Makes sure the built-in components are registered (the catalog is torch-free)."""
    import mptc.components.catalog  # noqa: F401

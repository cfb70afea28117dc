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


@attrs.frozen
class Component:
    """One registry entry."""

    kind: str
    name: str
    params: tuple[Param, ...]
    target: str | Callable
    doc: str = ""
    shape: Callable | None = None  # (args: dict, in_shape) -> out_shape, for compile-time shape checks

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def load(self) -> Callable:
        """The implementation (imports its module on first use)."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """name -> Component for one kind of component (models, heads, datasets, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Component] = {}

    def register(self, name: str, params=(), target: str | Callable | None = None, doc: str = "",
                 shape: Callable | None = None):
        """Adds an entry; used directly or as a decorator over the implementation."""
        def add(fn):
            self._entries[name] = Component(self.kind, name, tuple(params), target or fn, doc, shape)
            return fn
        return add(target) if target is not None else add

    def get(self, name: str) -> Component | None:
        return self._entries.get(name)

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

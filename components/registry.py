"""Name -> component registries: the extension points of mptc. Torch-free, so the compiler can check
specs against the declared parameters without importing the runtime's heavy modules.

A component declares its parameters; its implementation is a "module:attr" path loaded on first use
(or any callable, for a user's own component). A component registered by code outside mptc (a spec's
`import`, `--plugin`, an entry point, a Python session) records where it came from (`origin`), so that
its failures name the file, and a name two sources register is refused. docs/components.md is the
contract for your own components.

    >>> from mptc.components.registry import Registry, Param
    >>> acts = Registry("activation")
    >>> _ = acts.register("relu", [Param("inplace", "bool", False)], target="torch.nn:ReLU")
    >>> acts.names()
    ['relu']
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any, Callable

import attrs

from mptc.errors import RunError

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
    meta_expr: bool = False     # may instead be an expression of meta-parameters (a learned weight decay)


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
    origin: str = ""  # "" for mptc's own; else the registering code: a file's path or a module's name

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def load(self) -> Callable:
        """The implementation (imports its module on first use), its signature checked against the
        declaration the first time (`signature_problems`)."""
        if callable(self.target):
            fn = self.target
        else:
            module, _, attr = self.target.partition(":")
            fn = getattr(importlib.import_module(module), attr)
            if (self.kind, self.name, self.target) not in _VALIDATED:
                _raise_on(self, signature_problems(self, fn))
                _VALIDATED.add((self.kind, self.name, self.target))
        return _reported(self, fn) if self.origin and self.kind in _FACTORIES else fn

    def runtime_args(self, args: dict) -> dict:
        """The checked arguments the implementation receives: all but the compile-only ones."""
        return {k: v for k, v in args.items() if not getattr(self.param(k), "compile_only", False)}


# What an implementation receives besides its declared parameters, by kind, and which callable of an
# implementation object the declaration describes (an augmentation's `apply` after `x, eps`). A model or
# head factory gets `in_shape` (the public contract) or `in_dim` (the built-ins'), whichever it names.
CONTEXT = {"model": ("in_dim", "in_shape"), "head": ("in_dim", "in_shape"), "augmentation": 2,
           "baseline": ("trainer",), "protocol": ("trainer", "method", "state", "train_s", "baselines")}
_FACTORIES = ("model", "head", "dataset", "optimizer")  # called once to build something: failures named
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
        where = comp.target if isinstance(comp.target, str) else where_from(comp)
        raise DeclarationError(f"{comp.kind} '{comp.name}' ({where}): " + "; ".join(problems))


def where_from(comp: "Component") -> str:
    """Where a component comes from, as messages name it: "built in", a file (relative to the working
    directory when under it) or a module.

        >>> mine = Component("model", "m", (), "x:y", origin="pkg.mod")
        >>> where_from(Component("model", "m", (), "x:y")), where_from(mine)
        ('built in', 'pkg.mod')
    """
    if not comp.origin:
        return "built in"
    if comp.origin.endswith(".py"):
        try:
            rel = os.path.relpath(comp.origin)
        except ValueError:   # another drive
            return comp.origin
        return rel if not rel.startswith("..") else comp.origin
    return comp.origin


def _reported(comp: "Component", fn):
    """`fn` whose exceptions become one RunError naming the component, where it comes from and the
    message; the original exception is its cause (`mptc --debug` prints its traceback)."""
    @functools.wraps(fn)
    def build(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RunError:
            raise
        except Exception as e:
            from mptc.components.plugins import raised, user_frames
            path = comp.origin if comp.origin.endswith(".py") else None
            raise ComponentRaised(comp, raised(e, path)) from user_frames(e)
    return build


class ComponentRaised(RunError):
    """A user's own factory raised: `detail` is `Type: message (file:line)`, the exception is the cause."""

    def __init__(self, comp: "Component", detail: str):
        super().__init__(f"{comp.kind} '{comp.name}' ({where_from(comp)}) raised {detail}")
        self.comp, self.detail = comp, detail


def per_example(in_dim):
    """The per-example input shape a factory's `in_shape` receives, from the checker's `in_dim` (features,
    or the per-example tuple): `(features,)`, `(channels, height, width)`, ...; None when unknown.

        >>> per_example(32), per_example((1, 8, 8)), per_example(None)
        ((32,), (1, 8, 8), None)
    """
    if in_dim is None:
        return None
    return tuple(in_dim) if isinstance(in_dim, (tuple, list)) else (in_dim,)


def input_args(fn, in_dim) -> dict:
    """What a model or head factory receives besides its arguments: `in_shape=per_example(in_dim)` when it
    takes `in_shape` (the contract of docs/components.md), `in_dim` when it takes that (the built-ins),
    else nothing (e.g. a pretrained model that knows its own input).

        >>> input_args(lambda width, in_shape: None, 8), input_args(lambda hidden, in_dim: None, 8)
        ({'in_shape': (8,)}, {'in_dim': 8})
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {"in_dim": in_dim}
    if "in_shape" in params:
        return {"in_shape": per_example(in_dim)}
    return {"in_dim": in_dim} if "in_dim" in params else {}


def _caller_origin(depth: int) -> str:
    """The origin of a registration: "" from mptc itself, else the registering module's file when it was
    imported from a path (a spec's `import "file.py"`), else its module name."""
    scope = sys._getframe(depth + 1).f_globals
    name = scope.get("__name__", "")
    if name == "mptc" or name.startswith("mptc."):
        return ""
    from_path = name.startswith(FILE_MODULE_PREFIX) and scope.get("__file__")
    return os.path.abspath(from_path) if from_path else name


FILE_MODULE_PREFIX = "_mptc_file_"  # the module names of files imported by path (components/plugins.py)


class Registry:
    """name -> Component for one kind of component (models, heads, datasets, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Component] = {}

    def register(self, name: str, params=(), target: str | Callable | None = None, doc: str = "",
                 shape: Callable | None = None, traits: tuple[str, ...] = ()):
        """Adds an entry; used directly or as a decorator over the implementation. A name registered
        from another origin (mptc's own, another file or module) is refused; the same origin registering
        it again (its file imported again) replaces it."""
        origin = _caller_origin(1)

        def add(fn):
            comp = Component(self.kind, name, tuple(params), target or fn, doc, shape, tuple(traits), origin)
            if callable(comp.target):                    # a user's own component: checked as it registers
                _raise_on(comp, signature_problems(comp, comp.target))
            if origin and self.kind == "dataset" and shape is None:
                _raise_on(comp, ["a dataset needs a shape rule, e.g. shape=lambda args, _: "
                                 "{'x': (B, 16), 'y': (B, 3)}"])
            taken = self._entries.get(name)
            if taken is not None and taken.origin != origin:
                raise DeclarationError(f"{self.kind} '{name}' is already registered ({where_from(taken)}); "
                                       f"choose another name for the one of {where_from(comp)}")
            self._entries[name] = comp
            return fn
        return add(target) if target is not None else add

    def get(self, name: str) -> Component | None:
        """The entry of `name`; on a miss, the installed packages' entry points (group `mptc.components`)
        load once and the lookup is tried again (components/plugins.py)."""
        comp = self._entries.get(name)
        if comp is None:
            from mptc.components.plugins import load_entry_points
            if load_entry_points():
                comp = self._entries.get(name)
        return comp

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
# AANG's stage primitives (Dery et al. 2023): the choices of a space's data, transform, represent and output stages
AUX_DATA = Registry("aux_data")
TRANSFORMS = Registry("transform")
REPRESENTATIONS = Registry("representation")
OUTPUTS = Registry("output")

ALL = {r.kind: r for r in (MODELS, HEADS, DATASETS, OPTIMIZERS, FUNCTIONS, ESTIMATORS, SOLVERS,
                           PROTOCOLS, BASELINES, AUGMENTATIONS, AUX_DATA, TRANSFORMS, REPRESENTATIONS, OUTPUTS)}
# a space's stages that name AANG primitives, in the order objectives name them (data.transform.represent.output)
AUX_STAGES = {"data": AUX_DATA, "transform": TRANSFORMS, "represent": REPRESENTATIONS, "output": OUTPUTS}


def catalog_loaded() -> None:
    """Makes sure the built-in components are registered (the catalog is torch-free)."""
    import mptc.components.catalog  # noqa: F401

"""Specs from Python: build a spec with typed builders, render it to .mpt text, compile it, run it.

The builders make AST nodes (never strings), so `compiler/printer.py` owns the layout and a spec built in
Python compiles to the same plan as the same spec written by hand. Expressions are built with Python
operators on small `Expr` objects: `E.name` is a name of the language (a function, a component, a
symbol such as `auroc`), calling it makes a call, and the handles the builders return (`pt`, `encoder`,
`w`, ...) are names too.

    >>> from mptc import E, Spec, vector, x, y
    >>> s = Spec("tiny", "two tasks")
    >>> pt = s.data("pt", E.synthetic.multitask(examples=256, dim=8, tasks=12, seed=0))
    >>> encoder = s.model("encoder", E.mlp(hidden=[16, 4]))
    >>> w = s.meta("w", vector(12), init=0.0)
    >>> print(E.mean(2 * E.sigmoid(w) * E.bce(encoder(x), y)))
    mean(2 * sigmoid(w) * bce(encoder(x), y))
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from mptc.compiler import ast
from mptc.errors import NO_SPAN, SpecError, SpecErrors

_S = NO_SPAN  # builders make nodes without a source; compile() parses the rendered text, so errors point there


# ---- expressions ---------------------------------------------------------------------------------
class Expr:
    """An expression of the language: combine with + - * / ** and unary -, index with [], and, for a
    name, call it (`E.mean(v)`) or take a dotted part (`ft.train`, `E.synthetic.multitask`).

    >>> a = Expr(ast.Ref(_S, ("a",)))
    >>> print((a * 2 + 1) ** -a)
    (a * 2 + 1) ** -a
    """

    __slots__ = ("node",)

    def __init__(self, node):
        self.node = node

    # arithmetic: each operator makes a BinOp node; Python numbers become literals
    def _bin(self, op, other, swap=False):
        left, right = (node(other), self.node) if swap else (self.node, node(other))
        return Expr(ast.BinOp(_S, op, left, right))

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, swap=True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, swap=True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, swap=True)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._bin("/", o, swap=True)
    def __pow__(self, o): return self._bin("**", o)
    def __rpow__(self, o): return self._bin("**", o, swap=True)
    def __neg__(self): return Expr(ast.Neg(_S, self.node))
    def __pos__(self): return self

    def __getitem__(self, index) -> "Expr":
        return Expr(ast.Index(_S, self.node, node(index)))

    def __getattr__(self, part: str) -> "Expr":
        # private and dunder names stay Python's (copy, pickle and IPython probe for them)
        if part.startswith("_") or not isinstance(self.node, ast.Ref):
            raise AttributeError(part)
        return Expr(ast.Ref(_S, self.node.parts + (part,)))

    def __call__(self, *args, **kwargs) -> "Expr":
        """A call of this name: positional arguments, then keyword ones (`in_=3` is `in: 3`)."""
        if not isinstance(self.node, ast.Ref):
            raise TypeError(f"only a name can be called, not {self}")
        kws = tuple(ast.Kwarg(_S, _keyword(k), node(v)) for k, v in kwargs.items())
        return Expr(ast.Call(_S, self.node, tuple(node(a) for a in args), kws))

    def __str__(self) -> str:
        from mptc.compiler.printer import print_expr
        return print_expr(self.node)

    def __repr__(self) -> str:
        return f"Expr({self})"

    __hash__ = object.__hash__  # handles are used as dict keys and set members


class _Names:
    """`E.<name>`: any name of the language as an `Expr` (functions, components, symbols).

    >>> print(E.ift(E.neumann(terms=1)), E.auroc, E.synthetic.multitask())
    ift(neumann(terms: 1)) auroc synthetic.multitask()
    """

    def __getattr__(self, name: str) -> Expr:
        if name.startswith("_"):
            raise AttributeError(name)
        return Expr(ast.Ref(_S, (name,)))

    def __call__(self, dotted: str) -> Expr:
        """A name given as text: `E("synthetic.multitask")`."""
        return Expr(ast.Ref(_S, tuple(dotted.split("."))))


E = _Names()
x = E.x  # the batch's inputs inside a stage
y = E.y  # the batch's targets inside a stage

Value = Union[Expr, int, float, bool, str, Sequence]


def _keyword(name: str) -> str:
    """`in_` -> `in`: a trailing underscore lets Python keywords be keyword arguments."""
    return name[:-1] if name.endswith("_") and len(name) > 1 else name


def number(value: int | float, signed: bool = False):
    """A numeric literal node; negative numbers are a negated literal unless `signed` (train options).

    >>> print(Expr(number(-1e-3)), Expr(number(0.25)), Expr(number(3)))
    -1e-3 0.25 3
    """
    from mptc.compiler.printer import spell_number
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN has no .mpt spelling")
    text = _short(value) if isinstance(value, float) and math.isfinite(value) and value > 0 else spell_number(value)
    if text.startswith("-") and not signed:
        return ast.Neg(_S, number(-value))
    return ast.Number(_S, value, text)


def _short(value: float) -> str:
    """The shorter of repr and the shortest exact exponent spelling: 0.001 is written 1e-3, 0.1 stays 0.1."""
    for digits in range(17):
        mantissa, exponent = f"{value:.{digits}e}".split("e")
        if float(f"{mantissa}e{exponent}") == value:
            text = f"{mantissa}e{int(exponent)}"
            return text if len(text) < len(repr(value)) else repr(value)
    return repr(value)


def node(value: Value):
    """The AST node of a Python value: an Expr's node, a number, true/false, a string literal, a list.

    >>> print(Expr(node([1, 2.5, True, "a b"])))
    [1, 2.5, true, "a b"]
    """
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, bool):
        return ast.Ref(_S, ("true" if value else "false",))
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return ast.String(_S, value)
    if isinstance(value, (list, tuple)):
        return ast.ListExpr(_S, tuple(node(v) for v in value))
    raise TypeError(f"cannot use {type(value).__name__} {value!r} in a spec expression")


def _name_or_expr(value: Expr | str):
    """A component given as an Expr or by name (`"unroll"`, `"mlp"`)."""
    return E(value).node if isinstance(value, str) else node(value)


def _call(value: Expr | str) -> ast.Call:
    """A component as a call: a bare name `mlp` becomes `mlp()` where the grammar wants a call."""
    n = _name_or_expr(value)
    if isinstance(n, ast.Ref):
        return ast.Call(_S, n, (), ())
    if not isinstance(n, ast.Call):
        raise TypeError(f"expected a component such as E.adam(lr=0.1), got {Expr(n)}")
    return n


def _ref(value: Expr | str) -> ast.Ref:
    n = _name_or_expr(value)
    if not isinstance(n, ast.Ref):
        raise TypeError(f"expected a name such as ft.val, got {Expr(n)}")
    return n


def _idents(names: Iterable[Expr | str]) -> tuple[ast.Ident, ...]:
    return tuple(ast.Ident(_S, _ref(n).dotted) for n in names)


# ---- meta-parameter types ------------------------------------------------------------------------
MetaType = Union[ast.ScalarType, ast.VectorType, ast.NetworkType, ast.FactoredType]


def scalar() -> ast.ScalarType:
    """`scalar`: one number."""
    return ast.ScalarType(_S)


def vector(length: int) -> ast.VectorType:
    """`vector[length]`, e.g. one weight per pre-training task."""
    return ast.VectorType(_S, int(length))


def network(component: Expr | str) -> ast.NetworkType:
    """`network component(...)`: a meta-parameter that is a whole network, e.g. `network(E.mlp(hidden=[8]))`."""
    return ast.NetworkType(_S, _call(component))


def factored(space: Expr | str) -> ast.FactoredType:
    """`factored(space)`: AANG's factored weights over a space declared with `Spec.space`."""
    return ast.FactoredType(_S, _ref(space).dotted)


# ---- the spec ------------------------------------------------------------------------------------
class Spec:
    """A spec under construction: one builder method per declaration, each appending it in order.

    Builders that declare a name return it as an `Expr`, ready for use in expressions. `str(spec)` (or
    `render()`) is the canonical .mpt text; `compile()` the IR plan; `mptc.run(spec)` runs it.

    >>> s = Spec("demo")
    >>> w = s.meta("w", scalar(), init=1.0, bounds=(0, 2))
    >>> t = s.let("t", 2 * E.sigmoid(w))
    >>> print(s, end="")
    spec demo
    meta w: scalar = 1.0 in [0, 2]
    let t = 2 * sigmoid(w)
    """

    def __init__(self, name: str, doc: str | None = None):
        self.name, self.doc = name, doc
        self.items: list = [ast.SpecHeader(_S, name, doc)]

    def _add(self, item, name: str | None = None) -> Expr | None:
        self.items.append(item)
        return None if name is None else Expr(ast.Ref(_S, (name,)))

    # -- the code the spec uses --------------------------------------------------------------------
    def import_(self, code: str) -> None:
        """`import "file.py"` (a path ending in .py: relative to the spec's folder, or to the working
        directory for a Spec that was not saved) or `import package.module`: your own components
        (docs/components.md). Imports are placed before the other declarations.

        >>> s = Spec("mine")
        >>> s.import_("components.py"); s.import_("my_package.components")
        >>> print(s, end="")
        spec mine
        import "components.py"
        import my_package.components
        """
        from mptc.components.plugins import is_file
        source = ast.String(_S, code) if is_file(code) else E(code).node
        at = next((i for i, item in enumerate(self.items) if not isinstance(item, (ast.SpecHeader, ast.ImportDecl))),
                  len(self.items))
        self.items.insert(at, ast.ImportDecl(_S, source))

    # -- declarations that name something --------------------------------------------------------
    def data(self, name: str, source: Expr | str, split: Mapping[str, float] | None = None) -> Expr:
        """`data NAME = source(...) [split a f, ...]`; take a split of it as `handle.train`.

        >>> s = Spec("d")
        >>> ft = s.data("ft", E.synthetic.multitask_ft(of=E.pt), split={"train": 0.5, "val": 0.5})
        >>> print(str(s).splitlines()[-1])
        data ft = synthetic.multitask_ft(of: pt) split train 0.5, val 0.5
        """
        parts = tuple(ast.SplitPart(_S, k, node(v)) for k, v in (split or {}).items())
        return self._add(ast.DataDecl(_S, name, _call(source), parts, _S), name)

    def model(self, name: str, component: Expr | str) -> Expr:
        """`model NAME = component(...)`: the network pre-training shapes, e.g. `E.mlp(hidden=[64, 8])`."""
        return self._add(ast.ModelDecl(_S, name, _call(component), _S), name)

    def head(self, name: str, component: Expr | str) -> Expr:
        """`head NAME = component(...)`: a task head, e.g. `E.linear(out=5)`; apply it as `head(encoder(x))`."""
        return self._add(ast.HeadDecl(_S, name, _call(component), _S), name)

    def meta(self, name: str, type: MetaType | str, init: Value | None = None,
             bounds: tuple[Value, Value] | None = None) -> Expr:
        """`meta NAME: type [= init] [in [low, high]]`; `type` is `scalar()`, `vector(n)`, `network(...)`,
        `factored(space)` or the string "scalar"."""
        kind = scalar() if type == "scalar" else type
        if isinstance(kind, str):
            raise TypeError(f"unknown meta type {type!r}: use scalar(), vector(n), network(...) or factored(space)")
        low_high = None if bounds is None else (node(bounds[0]), node(bounds[1]))
        decl = ast.MetaDecl(_S, name, kind, None if init is None else node(init), low_high, _S)
        return self._add(decl, name)

    def let(self, name: str, value: Value) -> Expr:
        """`let NAME = expr`: a named expression, e.g. `s.let("task_weight", 2 * E.sigmoid(w))`."""
        return self._add(ast.LetDecl(_S, name, node(value), _S), name)

    def space(self, name: str, space) -> Expr:
        """`space NAME = ...`: a `mptc.space.product(...)` (or a SpaceDecl node) under a name.

        >>> from mptc import space
        >>> s = Spec("aang")
        >>> aux = s.space("aux", space.product(data=["task", "domain"], output=["denoise", "end_task"],
        ...                                    exclude=[space.when(data="domain", output="end_task")]))
        >>> print(str(s).splitlines()[-2:])
        ['space aux = data{task, domain} x output{denoise, end_task}', '  exclude data == domain and output == end_task']
        """
        decl = space.decl(name) if hasattr(space, "decl") else space
        return self._add(decl, name)

    # -- stages ----------------------------------------------------------------------------------------
    def pretrain(self, *, data: Expr | str | None = None, batch: int | None = None, loss: Value | None = None,
                 optimizer: Expr | str | None = None, steps: int | None = None,
                 augment: Expr | str | None = None) -> None:
        """`pretrain { ... }`: the PT stage. Clauses left as None are omitted (their defaults apply).

        >>> s = Spec("p")
        >>> s.pretrain(data="pt", batch=32, loss=E.mean(E.bce(E.h(x), y)), steps=2)
        >>> print(str(s).split("\\n", 2)[2], end="")
        pretrain {
          data pt batch 32
          loss mean(bce(h(x), y))
          steps 2
        }
        """
        self._stage("pretrain", None, data=data, batch=batch, loss=loss, optimizer=optimizer, steps=steps,
                    augment=augment)

    def finetune(self, *, data: Expr | str | None = None, batch: int | None = None, loss: Value | None = None,
                 optimizer: Expr | str | None = None, unroll: int | None = None,
                 update: Sequence[Expr | str] = ()) -> None:
        """`finetune { ... }`: the FT stage; `unroll` K steps that update the modules in `update`."""
        if update and unroll is None:
            raise ValueError("finetune: `update` needs `unroll` (the grammar reads `unroll K update a, b`)")
        self._stage("finetune", None, data=data, batch=batch, loss=loss, optimizer=optimizer, unroll=unroll,
                    update=update)

    def auxiliary(self, space: Expr | str, *, data: Expr | str | None = None, batch: int | None = None,
                  loss: Value | None = None, optimizer: Expr | str | None = None, sample: int | None = None,
                  weights: Value | None = None, end_task_weight: Value | None = None) -> None:
        """`auxiliary SPACE { ... }`: AANG's auxiliary objectives sampled from a space."""
        self._stage("auxiliary", _ref(space).dotted, data=data, batch=batch, loss=loss, optimizer=optimizer,
                    sample=sample, weights=weights, end_task_weight=end_task_weight)

    def _stage(self, kind: str, name: str | None, **given) -> None:
        clauses = []
        if given.get("data") is not None:
            clauses.append(ast.DataClause(_S, _ref(given["data"]), given.get("batch")))
        elif given.get("batch") is not None:
            raise ValueError(f"{kind}: `batch` needs `data`")
        if given.get("loss") is not None:
            clauses.append(ast.LossClause(_S, node(given["loss"])))
        if given.get("optimizer") is not None:
            clauses.append(ast.OptimizerClause(_S, _call(given["optimizer"])))
        if given.get("steps") is not None:
            clauses.append(ast.StepsClause(_S, int(given["steps"])))
        if given.get("unroll") is not None:
            clauses.append(ast.UnrollClause(_S, int(given["unroll"]), _idents(given.get("update") or ())))
        if given.get("augment") is not None:
            clauses.append(ast.AugmentClause(_S, _call(given["augment"])))
        if given.get("sample") is not None:
            clauses.append(ast.SampleClause(_S, int(given["sample"])))
        if given.get("weights") is not None:
            clauses.append(ast.WeightsClause(_S, node(given["weights"])))
        if given.get("end_task_weight") is not None:
            clauses.append(ast.EndTaskWeightClause(_S, node(given["end_task_weight"])))
        self._add(ast.Stage(_S, kind, name, tuple(clauses)))

    # -- the meta level --------------------------------------------------------------------------------
    def meta_objective(self, expr: Value, on: Expr | str) -> None:
        """`meta_objective expr on data.split`, e.g. `(E.mean(E.bce(ft_head(encoder(x)), y)), on=ft.val)`."""
        self._add(ast.ObjectiveDecl(_S, node(expr), _ref(on)))

    def hypergradient(self, check_every: int | None = None, **estimators: Expr | str) -> None:
        """`hypergradient stage: estimator, ...`, e.g. `(pretrain=E.ift(E.neumann(terms=1)), finetune="unroll")`."""
        entries = tuple(ast.HgEntry(_S, stage, _name_or_expr(est)) for stage, est in estimators.items())
        if not entries:
            raise ValueError("hypergradient needs at least one stage: estimator")
        self._add(ast.HypergradientDecl(_S, entries, check_every))

    def meta_optimizer(self, optimizer: Expr | str) -> None:
        """`meta_optimizer optimizer(...)`, e.g. `E.adam(lr=0.1)`."""
        self._add(ast.MetaOptimizerDecl(_S, _call(optimizer)))

    def train(self, **options: int | float | str) -> None:
        """`train key value ...`: meta_steps, warmup, seed, device, log_every, max_nonfinite, reset_every, dtype.
        A string that is a plain name (`device="auto"`) is written as a name, others quoted ("cuda:1")."""
        if not options:
            raise ValueError("train needs at least one option")
        self._add(ast.TrainDecl(_S, tuple(ast.Option(_S, k, _option(v)) for k, v in options.items())))

    def evaluate(self, protocol: Expr | str, against: Sequence[Expr | str] = ()) -> None:
        """`evaluate protocol(...) [against baseline, ...]`, e.g. `(E.finetune(epochs=300), ["pretrain"])`."""
        self._add(ast.EvaluateDecl(_S, _call(protocol), _idents(against)))

    # -- what a spec becomes ----------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The name errors and run directories know the rendered text by."""
        return f"{self.name}.mpt"

    def to_ast(self) -> ast.Spec:
        """The spec's syntax tree (spans are placeholders: the nodes have no source)."""
        return ast.Spec(_S, tuple(self.items))

    def render(self) -> str:
        """The canonical .mpt text (`compiler/printer.py` lays it out)."""
        from mptc.compiler.printer import print_spec
        return print_spec(self.to_ast())

    __str__ = render

    def save(self, path: str | Path) -> Path:
        """Writes the .mpt text to `path` and returns it."""
        path = Path(path)
        path.write_text(self.render(), encoding="utf-8")
        return path

    def compile(self, overrides: Sequence[str] = ()):
        """The IR plan (`mptc.compiler.ir.Plan`); raises CompileError with every error rendered."""
        return compile_text(self.render(), self.path, overrides)


def _option(value) -> object:
    if isinstance(value, str) and value.isidentifier():
        return ast.Ref(_S, (value,))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value, signed=True)
    return node(value)


# ---- compile and run ---------------------------------------------------------------------------------
class CompileError(SpecErrors):
    """Every error of a spec, rendered as `mptc check` shows them (path:line:col, the line, carets).

    `errors` holds the SpecError objects, `text` the rendered report."""

    def __init__(self, errors: list[SpecError], source: str, text: str):
        super().__init__(errors, source)
        self.text = text

    def __str__(self) -> str:
        return self.text


def compile_text(text: str, path: str = "<spec>", overrides: Sequence[str] = ()):
    """compile_spec, with user mistakes raised as a CompileError whose message is the rendered report."""
    from mptc.compiler.lower import compile_spec
    try:
        return compile_spec(text, path, list(overrides))
    except SpecError as e:
        raise _compile_error([e], text, path) from None
    except SpecErrors as e:
        raise _compile_error(e.errors, text, path) from None


def _compile_error(errors, text: str, path: str) -> CompileError:
    from mptc.sources import Sources, render
    sources = Sources({path: text})
    return CompileError(errors, text, "\n".join(render(e, sources) for e in errors))


def _source(spec: Spec | str | Path) -> tuple[str, str]:
    """(text, path) of a Spec, or of a .mpt file."""
    if isinstance(spec, Spec):
        return spec.render(), spec.path
    from mptc.sources import read_spec  # the one reader of spec files (a byte-order mark dropped, errors named)
    return read_spec(str(spec)), str(spec)


def run(spec: Spec | str | Path, out: str | Path | None = None, overrides: Sequence[str] = (),
        progress: bool = False) -> Path:
    """Compiles and runs a spec (a Spec or a .mpt path) like `mptc run`; returns the run directory.

        >>> run_dir = mptc.run(spec, out="runs/demo", overrides=["train.seed=1"])   # doctest: +SKIP
        >>> json.loads((run_dir / "meta.json").read_text())["task_weight"]["values"][:3]  # doctest: +SKIP
    """
    text, path = _source(spec)
    plan = compile_text(text, path, overrides)
    from mptc.runtime.executor import run_plan
    return Path(run_plan(plan, text, out, progress=progress))

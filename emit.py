"""`mptc compile SPEC --emit python`: a standalone PyTorch script that performs the same run as `mptc run`.

The script needs torch and nothing of mptc: the runtime code it uses is copied into it from mptc's own
modules, each definition with the module-level definitions it refers to, in the order of its module —
the data generators, the models, the optimizers, the solvers, the estimators (runtime/hypergradient.py,
built from the plan's arguments as runtime/loop.build builds them) and the loop itself (runtime/loop.py:
`Stages`, `State`, `meta_train`), so the script runs the very loop `mptc run` runs, not a twin of it. The
spec's expressions become Python functions, and templates/standalone.py.j2 holds what the loop asks of
mptc's Program and Data (initial parameters, batches) and the main function. At the same seed and device
the script's meta.json equals `mptc run`'s.

Supported (clear errors otherwise, listed in docs/python.md): synthetic data, mlp/linear models and heads
without dropout, the loss vocabulary, sgd/adam, scalar and vector meta-parameters, the `ift` and `unroll`
estimators with every option (solvers, fused, hvp modes, mixed terms, `check every`, cycles); no
`augment`, no network meta-parameters, no `search`, no evaluation (the script meta-trains).

    >>> from mptc.compiler.lower import QUICKSTART, compile_spec
    >>> script = emit_python(compile_spec(open(QUICKSTART).read(), QUICKSTART), "quickstart.mpt")
    >>> "def loss_pretrain(params, metas, x, y):" in script
    True
"""
from __future__ import annotations

import ast as pyast
import importlib
import inspect
import keyword
import math
import re
from pathlib import Path

import attrs

from mptc.compiler import ir
from mptc.errors import RunError

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Modules whose definitions may be copied; each must need only math, typing, torch (and attrs, rewritten)
EMBEDDABLE = ("mptc.errors", "mptc.runtime.datasets", "mptc.runtime.models", "mptc.runtime.optim", "mptc.runtime.parallel",
              "mptc.runtime.solvers", "mptc.runtime.hvp", "mptc.runtime.estimators", "mptc.runtime.hypergradient",
              "mptc.runtime.loop", "mptc.runtime.metajson")  # in the order the script defines them
SUPPORTED_DATA = ("synthetic.multitask", "synthetic.multitask_ft")
SUPPORTED_MODULES = ("mlp", "linear")
SUPPORTED_ESTIMATORS = ("ift", "unroll")


class EmitError(RunError):
    """A plan the Python emitter cannot render (a feature outside its supported subset)."""


# ---- spec values as Python source: the only ways a spec's strings and numbers enter the script ----------
class Code(str):
    """Python source built here (spec values through `literal`, names through `_ident`): the only kind of
    value the template may interpolate, so a spec string can never be pasted into the script as code."""


def literal(value) -> str:
    """Python source that evaluates to `value` (None, bool, int, float, str, and lists, tuples and dicts of
    them): repr(), except the non-finite floats, which repr spells as the undefined names inf and nan.

    >>> print(literal({"bounds": [-math.inf, 1.0], "name": 'say "hi"'}))
    {'bounds': [float('-inf'), 1.0], 'name': 'say "hi"'}
    """
    if isinstance(value, _Ref):
        return repr(value)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)  # not a subclass's repr (an enum's <A.b: 1>)
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else f"float('{value}')"
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, list):
        return f"[{', '.join(map(literal, value))}]"
    if isinstance(value, tuple):
        return f"({literal(value[0])},)" if len(value) == 1 else f"({', '.join(map(literal, value))})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise EmitError(f"emit python cannot write a {type(value).__name__} as a Python literal")


def _ident(name: str) -> str:
    """A spec name used as (part of) a Python name: the grammar's NAME, checked again here because it
    becomes code."""
    if not (isinstance(name, str) and name.isascii() and name.isidentifier()):
        raise EmitError(f"emit python: {name!r} is not a name it can use in Python code")
    return name


def _in_docstring(text) -> str:
    """`text` for the inside of the script's triple-quoted docstring, whose value is then `text` unchanged:
    backslashes and double quotes escaped, so nothing in it can end the string, and unprintable characters
    but the newline (NUL, CR, U+2028) written as escapes."""
    return "".join(_docstring_char(ch) for ch in str(text))


def _docstring_char(ch: str) -> str:
    if ch in '\\"':
        return "\\" + ch
    return ch if ch == "\n" or ch.isprintable() else repr(ch)[1:-1]  # repr's escape: \x00, \r, \u2028


def _comment(text) -> str:
    """`text` for a `#` comment: line breaks and other unprintable characters become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


# ---- copying runtime definitions -----------------------------------------------------------------
@attrs.define
class _Module:
    """A module's top-level definitions: name -> (order, source, names it refers to), and its imports."""

    name: str
    defs: dict
    imports: dict  # local name -> (mptc module, name there)


def _top_level(node) -> list[str]:
    if isinstance(node, (pyast.FunctionDef, pyast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, pyast.Assign) else [node.target] if isinstance(
        node, pyast.AnnAssign) else []
    return [n.id for t in targets for n in pyast.walk(t) if isinstance(n, pyast.Name)]


def _read_module(name: str) -> _Module:
    source = inspect.getsource(importlib.import_module(name))
    # lines as ast numbers them: "\n" (getsource's universal newlines), not splitlines' \x0c or U+2028 too
    lines, tree = source.split("\n"), pyast.parse(source)
    defs, imports = {}, {}
    for order, node in enumerate(tree.body):
        if isinstance(node, pyast.ImportFrom) and (node.module or "").startswith("mptc."):
            imports.update({a.asname or a.name: (node.module, a.name) for a in node.names})
            continue
        names = _top_level(node)
        if not names or names == ["__all__"]:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "\n".join(lines[start - 1:node.end_lineno])
        refs = {n.id for n in pyast.walk(node) if isinstance(n, pyast.Name)}
        for n in names:
            defs[n] = (order, text, refs)
    return _Module(name, defs, imports)


class Embedder:
    """Collects runtime definitions with everything they refer to, then renders them module by module."""

    def __init__(self):
        self.modules: dict[str, _Module] = {}
        self.wanted: dict[str, set] = {}

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            if name not in EMBEDDABLE:
                raise EmitError(f"emit python cannot copy code from {name}")
            self.modules[name] = _read_module(name)
        return self.modules[name]

    def want(self, module: str, name: str) -> None:
        """`module.name` and, transitively, the module-level names (and mptc imports) it uses."""
        if name in self.wanted.setdefault(module, set()):
            return
        mod = self.module(module)
        if name in mod.imports:
            self.want(*mod.imports[name])
            return
        if name not in mod.defs:
            raise EmitError(f"emit python: {module} has no top-level '{name}'")
        self.wanted[module].add(name)
        for ref in sorted(mod.defs[name][2]):
            if ref != name and (ref in mod.defs or ref in mod.imports):
                self.want(module, ref)

    def target(self, target: str) -> str:
        """Wants a registry target `module:name`; returns the name."""
        module, _, name = target.partition(":")
        self.want(module, name)
        return name

    def render(self) -> list[tuple[str, str]]:
        """[(module, code)] in dependency-safe order: modules imported from come first."""
        blocks, seen = [], {}
        for module in sorted(self.wanted, key=lambda m: EMBEDDABLE.index(m)):
            mod = self.modules[module]
            chosen = sorted({mod.defs[n][:2] for n in self.wanted[module]})
            for text in (t for _, t in chosen):
                for n in _defined_names(text):
                    if seen.setdefault(n, text) != text:
                        raise EmitError(f"emit python: two different definitions of '{n}' ({module})")
            code = "\n\n\n".join(t for _, t in chosen if not _duplicate(t, blocks))
            blocks.append((module, _without_attrs(code)))
        return blocks


def _defined_names(text: str) -> list[str]:
    return [n for node in pyast.parse(text).body for n in _top_level(node)]


def _duplicate(text: str, blocks) -> bool:
    return any(text in code for _, code in blocks)


def _without_attrs(code: str) -> str:
    """attrs (a dependency of mptc, not of the script) rewritten to the standard library's dataclasses."""
    code = code.replace("@attrs.frozen(eq=False)", "@dataclasses.dataclass(frozen=True, eq=False)")
    code = re.sub(r"^@attrs\.frozen$", "@dataclasses.dataclass(frozen=True)", code, flags=re.M)
    code = re.sub(r"^@attrs\.define$", "@dataclasses.dataclass", code, flags=re.M)
    code = code.replace("attrs.Factory(dict)", "dataclasses.field(default_factory=dict)")
    code = code.replace("attrs.evolve(", "dataclasses.replace(")
    if re.search(r"^\s*(from|import) mptc\b", code, flags=re.M):   # the script needs torch alone
        raise EmitError("emit python: copied code imports mptc inside a function")
    if re.search(r"\battrs\.", code):
        raise EmitError("emit python: copied code uses attrs in a way it cannot rewrite")
    return code


# ---- the spec's expressions as Python ------------------------------------------------------------------
_TORCH_HOMES = ("torch", "torch.nn.functional", "torch.special")


def _function(name: str, fns: dict, obj=None) -> str:
    """The Python name of loss function `name` in the script (`fn_bce`), its definition added to `fns`
    (`obj`: the function itself, for one of the executor's own that the spec cannot name)."""
    from mptc.components.registry import FUNCTIONS
    obj = FUNCTIONS.get(name).load() if obj is None else obj
    if name not in fns:
        if inspect.isfunction(obj) and obj.__module__.startswith("mptc."):
            src = inspect.getsource(obj)
            fns[name] = re.sub(rf"^def {obj.__name__}\(", f"def fn_{_ident(name)}(", src, count=1, flags=re.M).rstrip()
        else:
            home = next((h for h in _TORCH_HOMES if getattr(importlib.import_module(h), obj.__name__, None) is obj),
                        None)
            if home is None:
                raise EmitError(f"emit python: cannot name the torch function behind '{name}'")
            fns[name] = f"fn_{_ident(name)} = {home}.{obj.__name__}"
    return f"fn_{_ident(name)}"


class _Expr:
    """IR expressions as Python source over (params, metas, x, y); binary operations fully parenthesised.
    Numbers and names of the spec enter as literals (`literal`), names of Python functions via `_ident`."""

    OPS = ("+", "-", "*", "/", "**")

    def __init__(self, fns: dict):
        self.fns = fns

    def __call__(self, e) -> str:
        method = getattr(self, "_" + type(e).__name__, None)
        if method is None:
            raise EmitError(f"emit python does not support {type(e).__name__} expressions (e.g. `augment`)")
        return method(e)

    def _Const(self, e):
        if isinstance(e.value, list):
            return f"torch.tensor({literal(e.value)}, device=DEVICE, dtype=DTYPE)"
        return literal(e.value)

    def _Input(self, e):
        if e.name not in ("x", "y"):
            raise EmitError(f"emit python: unknown input {e.name!r}")
        return e.name

    def _MetaRef(self, e):
        return f"metas[{literal(e.name)}]"

    def _LetRef(self, e):
        return f"let_{_ident(e.name)}(params, metas, x, y)"

    def _Apply(self, e):
        return f"apply({literal(e.module)}, params, {_top(self(e.arg))})"

    def _Norm(self, e):
        _require(False, f"l2({e.module}) (a module's parameter norm)")

    def _Fn(self, e):
        from mptc.runtime import functions
        from mptc.runtime.program import mean_bce_parts
        parts = mean_bce_parts(e)                       # as the executor computes it (runtime/program.py)
        if parts is not None:
            args = ", ".join(_top(self(a)) for a in parts[:2])
            weight = "None" if parts[2] is None else _top(self(parts[2]))
            return f"{_function('mean_bce', self.fns, functions.mean_bce)}({args}, {weight})"
        return f"{_function(e.name, self.fns)}({', '.join(_top(self(a)) for a in e.args)})"

    def _Bin(self, e):
        if e.op not in self.OPS:
            raise EmitError(f"emit python: unknown operator {e.op!r}")
        return f"({self(e.left)} {e.op} {self(e.right)})"

    def _Neg(self, e):
        return f"(-{self(e.operand)})"

    def _Index(self, e):
        return f"{self(e.target)}[as_index({_top(self(e.index))})]"


def _top(code: str) -> str:
    return code[1:-1] if code.startswith("(") and code.endswith(")") and _balanced(code[1:-1]) else code


def _balanced(code: str) -> bool:
    depth = 0
    for ch in code:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# ---- checking the plan is in the supported subset ---------------------------------------------------------
def _require(ok: bool, what: str) -> None:
    if not ok:
        raise EmitError(f"emit python does not support {what} yet (supported: synthetic data, mlp/linear, "
                        "sgd/adam, the ift and unroll estimators with every option; docs/python.md)")


def _check_plan(plan: ir.Plan) -> None:
    """Refuses (EmitError, exit 2) a plan with a part outside the supported subset (module docstring)."""
    for d in plan.datasets:
        _require(d.source.name in SUPPORTED_DATA, f"data '{d.source.name}'")
    for m in plan.modules:
        _require(m.component.name in SUPPORTED_MODULES, f"module component '{m.component.name}'")
        _require(not m.component.args.get("dropout"), "dropout")
    for m in plan.metas:
        _require(m.kind in ("scalar", "vector"), f"{m.kind} meta-parameters")
        _require(m.rate is None, "a meta-parameter's own rate")
    _require(plan.auxiliary is None, "auxiliary objectives")
    for e in plan.estimators:
        _require(e.method.name in SUPPORTED_ESTIMATORS, f"{e.stage} estimator '{e.method.name}'")
        solver = e.method.args.get("solver")
        _require(getattr(solver, "name", None) != "amortized", "the amortized solver")
    _require(plan.train.dtype == "float32", f"train dtype {plan.train.dtype}")
    _require(plan.train.precision == "fp32", f"train precision {plan.train.precision}")


def _built(kind: str, comp: ir.Component, emb: "Embedder") -> Code:
    """`Entry(arg=..., ...)`: the object registry `kind`'s entry builds from `comp` (as runtime/loop.build
    does), its implementation copied into the script; a `call:` argument built the same way first."""
    from mptc.components.registry import ALL
    entry = ALL[kind].get(comp.name)
    args, nested = {}, []
    for p in entry.params:
        value = comp.args.get(p.name)
        if p.kind.startswith("call:") and value is not None:
            nested.append(f"{_ident(p.name)}={_built(p.kind[5:], value, emb)}")
        elif not p.compile_only:
            args[p.name] = value
    call = _component_call(ir.Component(comp.name, args), emb.target(entry.target), ", ".join(nested))
    return Code(call)


# ---- the script ----------------------------------------------------------------------------------------
def _environment():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             finalize=_only_code)
    env.filters["py"] = lambda v: Code(literal(v))  # values written as Python literals
    env.filters["doc"] = lambda v: Code(_in_docstring(v))  # text inside the docstring
    env.filters["comment"] = lambda v: Code(_comment(v))  # text after a `#`
    env.filters["ident"] = lambda v: Code(_ident(v))  # a name inside a Python name (`let_NAME`)
    return env


def _only_code(value):
    """Every `{{ ... }}` of the template goes through a filter above or is Code built here: a raw value
    (a spec's string or number) is refused instead of being pasted into the script as source."""
    if not isinstance(value, Code):
        raise EmitError(f"emit python: the template writes a raw {type(value).__name__} "
                        "(pass it through `py`, `doc`, `comment` or `ident`)")
    return value


def _plain_kwarg(k: str) -> bool:
    return k.isascii() and k.isidentifier() and not keyword.iskeyword(k)


def _component_call(comp: ir.Component, name: str, extra: str = "") -> Code:
    """`name(k=v, ...)`; a parameter named by a Python keyword (mlp's `in`) goes through `**{...}`."""
    plain = [f"{k}={literal(v)}" for k, v in comp.args.items() if _plain_kwarg(k)]
    other = {k: v for k, v in comp.args.items() if not _plain_kwarg(k)}
    args = plain + ([f"**{literal(other)}"] if other else []) + ([extra] if extra else [])
    return Code(f"{_ident(name)}({', '.join(args)})")


def emit_python(plan: ir.Plan, spec_path: str = "<spec>") -> str:
    """The standalone script for a plan; raises EmitError for a plan outside the supported subset."""
    from mptc.components.registry import DATASETS, HEADS, MODELS, OPTIMIZERS
    from mptc.runtime.loop import encoder_modules
    _check_plan(plan)
    emb, fns = Embedder(), {}
    expr = _Expr(fns)
    datasets = []
    for d in plan.datasets:
        fn = emb.target(DATASETS.get(d.source.name).target)
        source = ir.Component(d.source.name, {k: (_Ref(v) if k == "of" else v) for k, v in d.source.args.items()})
        datasets.append({"name": d.name, "call": _component_call(source, fn), "splits": dict(d.splits),
                         "seed": d.source.args.get("seed", 0) or 0})
    if any(d["splits"] for d in datasets):
        emb.want("mptc.runtime.datasets", "split")
    modules = []
    for m in plan.modules:
        comp = (MODELS if m.role == "model" else HEADS).get(m.component.name)
        fn = emb.target(comp.target)
        args = ir.Component(m.component.name, comp.runtime_args(m.component.args))
        modules.append({"name": m.name, "build": _component_call(args, fn, f"in_dim={literal(m.in_dim)}")})
    optimizers = {}
    for key, comp in (("pretrain", plan.pretrain.optimizer), ("finetune", plan.finetune.optimizer),
                      ("meta", plan.meta_optimizer)):
        optimizers[key] = _component_call(comp, emb.target(OPTIMIZERS.get(comp.name).target))
    methods = {e.stage: e.method for e in plan.estimators}
    estimators = {stage: _built("estimator", methods[stage], emb) for stage in ("pretrain", "finetune")}
    for name in ("Settings", "Stages", "meta_train"):            # the loop itself, as mptc runs it
        emb.want("mptc.runtime.loop", name)
    for name in ("meta_json", "task_names"):               # meta.json's format, as `mptc run` writes it
        emb.want("mptc.runtime.metajson", name)
    lets = [{"name": let.name, "code": Code(_top(expr(let.expr))), "meta_only": let.meta_only} for let in plan.lets]
    losses = {"pretrain": Code(_top(expr(plan.pretrain.loss))), "finetune": Code(_top(expr(plan.finetune.loss))),
              "objective": Code(_top(expr(plan.objective.expr)))}
    return _environment().get_template("standalone.py.j2").render(
        plan=plan, spec_path=spec_path, blocks=[(m, Code(code)) for m, code in emb.render()],
        functions=Code("\n\n\n".join(fns.values())), datasets=datasets, modules=modules, optimizers=optimizers,
        estimators=estimators, lets=lets, losses=losses, encoder=encoder_modules(plan),
        metas=[{"name": m.name, "shape": Code(literal(() if m.kind == "scalar" else (m.size,))), "init": m.init}
               for m in plan.metas], bounds={m.name: list(m.bounds) for m in plan.metas if m.bounds},
        refs={"pretrain": plan.pretrain.data, "finetune": plan.finetune.data, "objective": plan.objective.data},
    )


class _Ref(str):
    """A dataset argument naming another dataset: written as the variable, not as a string."""

    def __repr__(self) -> str:
        return f"sets[{literal(str(self))}]"


def cmd_emit(args, plan: ir.Plan) -> int:
    """`mptc compile SPEC --emit python`: the script on stdout."""
    print(emit_python(plan, args.spec), end="")
    return 0

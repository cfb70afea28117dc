"""`--set key=value` overrides: dotted paths into the spec's AST, applied before the checks so that an
override is checked exactly like the spec text. A value is parsed as a .mpt expression; its spans point
into a synthetic source named `--set KEY=VALUE`, so errors in it render like any other.

Paths: `train.seed`, `meta_optimizer.lr`, `evaluate.seeds`, `data.NAME.ARG`, `model.NAME.ARG`,
`head.NAME.ARG`, `pretrain.optimizer.lr`, `pretrain.steps`, `pretrain.data.batch`, `finetune.unroll`,
`meta.NAME.init`, `meta.NAME.length` (a vector's), `data.NAME.split.PART` (a split fraction),
`hypergradient.STAGE.ARG` (an argument of the stage's estimator); and a whole component, `NAME(ARGS)` in
place of the one written: `meta_optimizer`, `evaluate`, `data.NAME` (e.g. the real data instead of its
stand-in), `model.NAME`, `head.NAME`, `pretrain.optimizer`, `finetune.optimizer`, `hypergradient.STAGE`
(the estimator of a stage, e.g. `ift(cg(iters: 20))`, added when the spec gives none). `finetune.update`
takes module names, `a,b` or `[a, b]`: what the unrolled FT steps update.

    >>> from mptc.compiler.parse import parse
    >>> spec = parse("train seed 0", "q.mpt")
    >>> apply_overrides(spec, ["train.seed=3"]).items[0].options[0].value.value
    3
"""
from __future__ import annotations

import attrs

from mptc.compiler import ast
from mptc.compiler.language import OVERRIDE_PREFIX, OVERRIDE_ROOTS
from mptc.compiler.parse import parse
from mptc.compiler.values import fold
from mptc.components.catalog import ESTIMATOR_DEFAULTS
from mptc.errors import BadArgument, Span, SpecErrors, SyntaxProblem, UnknownName, did_you_mean

def _source(item: str) -> tuple[str, str, str, Span, Span]:
    path = OVERRIDE_PREFIX + item
    key, sep, value = item.partition("=")
    key_span = Span(path, 1, 1, 1, max(len(key), 1) + 1)
    if not sep or not key or not value:
        raise SpecErrors([BadArgument(key_span, "--set takes KEY=VALUE, e.g. --set train.seed=3")], item)
    return path, key, value, key_span, Span(path, 1, len(key) + 2, 1, len(item) + 1)


def _value(path: str, key: str, value: str):
    """Parses VALUE as an expression whose columns point into `KEY=VALUE`."""
    expr = parse(" " * (len(key) + 1) + value, path, start="expr")
    return expr


def _tail(key_span: Span, name: str, value) -> Span:
    """`NAME=VALUE` at the end of `--set a.b.NAME=VALUE`: where an error about the argument points."""
    return Span(key_span.path, 1, key_span.end_col - len(name), 1, value.span.end_col)


def _set_kwarg(call: ast.Call, name: str, value, key_span) -> ast.Call:
    kwargs = [k for k in call.kwargs if k.name != name] + [ast.Kwarg(_tail(key_span, name, value), name, value)]
    return attrs.evolve(call, kwargs=tuple(kwargs))


def _fail(key_span, message, options=(), name=None):
    hint = did_you_mean(name, options) if name else None
    raise SpecErrors([UnknownName(key_span, message, hint=hint)], "")


def _named(spec, kind, name, key_span, what):
    found = [i for i in spec.items if isinstance(i, kind) and i.name == name]
    if not found:
        names = [i.name for i in spec.items if isinstance(i, kind)]
        _fail(key_span, f"no {what} '{name}' in the spec", names, name)
    return found[0]


def _replace(spec, old, new):
    return attrs.evolve(spec, items=tuple(new if i is old else i for i in spec.items))


def _component(value, key_span, key):
    """VALUE as a whole component, `name` or `name(args)`."""
    if not isinstance(value, (ast.Call, ast.Ref)):
        raise SpecErrors([BadArgument(value.span, f"--set {key}=... takes a component, e.g. NAME(ARG: VALUE)")], "")
    return value


def _override_call_holder(spec, parts, value, key_span):
    kind = {"data": (ast.DataDecl, "source"), "model": (ast.ModelDecl, "component"),
            "head": (ast.HeadDecl, "component")}[parts[0]]
    if parts[0] == "data" and len(parts) == 4 and parts[2] == "split":
        return _override_split(spec, parts, value, key_span)
    if len(parts) not in (2, 3):
        forms = [f"{parts[0]}.NAME.ARGUMENT=VALUE", f"{parts[0]}.NAME=COMPONENT(ARGS)"]
        forms += ["data.NAME.split.PART=FRACTION"] if parts[0] == "data" else []
        split = parts[0] == "data" and len(parts) == 4 and did_you_mean(parts[2], ["split"])
        raise SpecErrors([BadArgument(key_span, f"use --set {', '.join(forms[:-1])} or {forms[-1]}",
                                      hint=".".join(parts[:2] + ["split", parts[3]]) if split else None)], "")
    decl = _named(spec, kind[0], parts[1], key_span, parts[0])
    call = getattr(decl, kind[1])
    new = (_set_kwarg(call, parts[2], value, key_span) if len(parts) == 3
           else _component(value, key_span, ".".join(parts)))
    return _replace(spec, decl, attrs.evolve(decl, **{kind[1]: new}))


def _override_split(spec, parts, value, key_span):
    """`data.NAME.split.PART=FRACTION`: one fraction of the split clause (the checker sees that the
    fractions still sum to 1, and points at this override when they do not)."""
    decl = _named(spec, ast.DataDecl, parts[1], key_span, "data")
    names = [p.name for p in decl.split]
    if not names:
        _fail(key_span, f"data '{decl.name}' has no split clause to override")
    part = next((p for p in decl.split if p.name == parts[3]), None)
    if part is None:
        name_span = Span(key_span.path, 1, key_span.end_col - len(parts[3]), 1, key_span.end_col)
        _fail(name_span, f"data '{decl.name}' has no split '{parts[3]}' (its splits are {', '.join(names)})", names,
              parts[3])
    new = attrs.evolve(part, span=_tail(key_span, parts[3], value), fraction=value)
    return _replace(spec, decl, attrs.evolve(decl, split=tuple(new if p is part else p for p in decl.split)))


def _override_estimator(spec, parts, value, key_span):
    """`hypergradient.STAGE=ESTIMATOR` or `hypergradient.STAGE.ARG=VALUE`: the stage's entry replaced, or
    added (with the declaration, when the spec has none); the checker checks stage and estimator."""
    if len(parts) not in (2, 3):
        raise SpecErrors([BadArgument(key_span, "use --set hypergradient.STAGE=ESTIMATOR or "
                                                "hypergradient.STAGE.ARGUMENT=VALUE")], "")
    stage, item_end = parts[1], value.span.end_col
    stage_span = Span(key_span.path, 1, len(parts[0]) + 2, 1, len(parts[0]) + 2 + len(stage))
    decl = next((i for i in spec.items if isinstance(i, ast.HypergradientDecl)), None)
    old = next((e for e in (decl.entries if decl else ()) if e.stage == stage), None)
    if len(parts) == 2:
        estimator = _component(value, key_span, ".".join(parts))
    else:                                               # an argument of the written (or default) estimator
        current = old.estimator if old else ast.Ref(stage_span, (ESTIMATOR_DEFAULTS.get(stage, "ift"),))
        call = current if isinstance(current, ast.Call) else ast.Call(current.span, current, (), ())
        estimator = _set_kwarg(call, parts[2], value, key_span)
    # the entry's text starts at the stage's name, where an unknown stage is reported
    entry = ast.HgEntry(Span(key_span.path, 1, stage_span.col, 1, item_end), stage, estimator)
    if decl is None:
        return attrs.evolve(spec, items=spec.items + (ast.HypergradientDecl(entry.span, (entry,), None),))
    entries = tuple(entry if e is old else e for e in decl.entries) + (() if old else (entry,))
    return _replace(spec, decl, attrs.evolve(decl, entries=entries))


def _module_names(path: str, key: str, value: str, value_span: Span) -> tuple[ast.Ident, ...]:
    """VALUE as module names, `a,b` or `[a, b]`: the grammar's list of expressions (brackets added when
    not written, in place of the `=`, so the columns stay those of `KEY=VALUE`), each a plain name."""
    usage = f"--set {key} takes module names separated by commas, e.g. {key}=ft_head,encoder"
    written = value.lstrip().startswith("[")
    try:
        expr = parse(" " * (len(key) + 1) + value if written else " " * len(key) + "[" + value + "]", path,
                     start="expr")
    except SyntaxProblem:
        raise SpecErrors([BadArgument(value_span, usage)], "") from None
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    bad = [i for i in items if not (isinstance(i, ast.Ref) and len(i.parts) == 1)]
    if bad or not items:
        raise SpecErrors([BadArgument(bad[0].span if bad else value_span, usage)], "")
    return tuple(ast.Ident(i.span, i.parts[0]) for i in items)


def _override_update(spec, names: tuple[ast.Ident, ...], key_span: Span, value_span: Span):
    """`finetune.update=a,b`: the modules the unrolled FT steps update (an `unroll` clause with the
    default K added when the block has none); the checker checks the names against the FT loss."""
    from mptc.compiler.lower import DEFAULT_STEPS
    stage = next((i for i in spec.items if isinstance(i, ast.Stage) and i.kind == "finetune"), None)
    if stage is None:
        _fail(key_span, "the spec has no 'finetune' block")
    clause = next((c for c in stage.clauses if isinstance(c, ast.UnrollClause)), None)
    if clause is not None:
        clauses = tuple(attrs.evolve(c, update=names) if c is clause else c for c in stage.clauses)
    else:
        span = Span(key_span.path, 1, key_span.end_col - len("update"), 1, value_span.end_col)
        clauses = stage.clauses + (ast.UnrollClause(span, DEFAULT_STEPS["finetune"], names),)
    return _replace(spec, stage, attrs.evolve(stage, clauses=clauses))


def _override_single(spec, parts, value, key_span):
    kind = {"train": ast.TrainDecl, "meta_optimizer": ast.MetaOptimizerDecl, "evaluate": ast.EvaluateDecl}[parts[0]]
    decl = next((i for i in spec.items if isinstance(i, kind)), None)
    whole = len(parts) == 1 and kind is not ast.TrainDecl
    if len(parts) != 2 and not whole:
        raise SpecErrors([BadArgument(key_span, f"use --set {parts[0]}.KEY=VALUE")], "")
    if decl is None and kind is ast.TrainDecl:
        option = ast.Option(_tail(key_span, parts[1], value), parts[1], value)
        return attrs.evolve(spec, items=spec.items + (ast.TrainDecl(option.span, (option,)),))
    if decl is None and whole:                          # a meta-optimizer or evaluation the spec left out
        call = _component(value, key_span, parts[0])
        extra = {"against": ()} if kind is ast.EvaluateDecl else {}
        return attrs.evolve(spec, items=spec.items + (kind(call.span, call, **extra),))
    if decl is None:
        _fail(key_span, f"the spec has no '{parts[0]}' to override")
    if kind is ast.TrainDecl:
        options = [o for o in decl.options if o.key != parts[1]] + [ast.Option(_tail(key_span, parts[1], value),
                                                                            parts[1], value)]
        return _replace(spec, decl, attrs.evolve(decl, options=tuple(options)))
    call = _component(value, key_span, parts[0]) if whole else _set_kwarg(decl.call, parts[1], value, key_span)
    return _replace(spec, decl, attrs.evolve(decl, call=call))


def _vector_length(decl, value, key_span) -> ast.VectorType:
    """`vector[N]` with the N given (e.g. one weight per task of the real dataset, not the stand-in's)."""
    if not isinstance(decl.type, ast.VectorType):
        raise SpecErrors([BadArgument(key_span, f"'{decl.name}' is not a vector: only a vector has a length")], "")
    number = fold(value)
    if not isinstance(number, int) or isinstance(number, bool):
        raise SpecErrors([BadArgument(value.span, "'length' must be an integer")], "")
    return ast.VectorType(_tail(key_span, "length", value), number)  # a range error points at the override


_STAGE_INT = {"steps": (ast.StepsClause, "n"), "unroll": (ast.UnrollClause, "k")}
_STAGE_KEYS = {"pretrain": ("steps",), "finetune": ("unroll", "update")}  # besides optimizer and data.batch


def _override_stage(spec, parts, value, key_span):
    stage = next((i for i in spec.items if isinstance(i, ast.Stage) and i.kind == parts[0]), None)
    if stage is None:
        _fail(key_span, f"the spec has no '{parts[0]}' block")
    rest = parts[1:]
    if rest[:1] == ["optimizer"] and len(rest) in (1, 2):
        clause = next((c for c in stage.clauses if isinstance(c, ast.OptimizerClause)), None)
        if clause is None:
            _fail(key_span, f"'{parts[0]}' has no 'optimizer' clause")
        call = (_set_kwarg(clause.call, rest[1], value, key_span) if len(rest) == 2
                else _component(value, key_span, ".".join(parts)))
        new = attrs.evolve(clause, call=call)
    elif rest == ["data", "batch"] or (len(rest) == 1 and rest[0] in _STAGE_INT):
        new = _int_clause(stage, rest, value, key_span)
    else:
        opts = ["optimizer.lr", "optimizer", *_STAGE_KEYS[parts[0]], "data.batch"]
        _fail(key_span, f"cannot override '{'.'.join(rest)}' of {parts[0]} (try: {', '.join(opts)})", opts, ".".join(rest))
    clauses = tuple(new if c is _clause_of(stage, new) else c for c in stage.clauses)
    return _replace(spec, stage, attrs.evolve(stage, clauses=clauses))


def _clause_of(stage, new):
    return next(c for c in stage.clauses if type(c) is type(new))


def _int_clause(stage, rest, value, key_span):
    number = fold(value)
    if not isinstance(number, int) or isinstance(number, bool):
        raise SpecErrors([BadArgument(value.span, f"'{'.'.join(rest)}' must be an integer")], "")
    if rest[0] == "data":
        clause = next((c for c in stage.clauses if isinstance(c, ast.DataClause)), None)
        field = "batch"
    else:
        kind, field = _STAGE_INT[rest[0]]
        clause = next((c for c in stage.clauses if isinstance(c, kind)), None)
    if clause is None:
        _fail(key_span, f"'{stage.kind}' has no '{rest[0]}' clause to override")
    # the clause now points at the override, so a range error shows the value the user gave
    return attrs.evolve(clause, span=_tail(key_span, rest[-1], value), **{field: number})




def apply_override(spec: ast.Spec, item: str) -> ast.Spec:
    """One `KEY=VALUE` applied to the spec's AST."""
    path, key, text, key_span, value_span = _source(item)
    parts = key.split(".")
    if parts == ["finetune", "update"]:              # names, not an expression
        return _override_update(spec, _module_names(path, key, text, value_span), key_span, value_span)
    value = _value(path, key, text)
    if parts[0] in ("data", "model", "head"):
        return _override_call_holder(spec, parts, value, key_span)
    if parts[0] in ("train", "meta_optimizer", "evaluate"):
        return _override_single(spec, parts, value, key_span)
    if parts[0] in ("pretrain", "finetune"):
        return _override_stage(spec, parts, value, key_span)
    if parts[0] == "hypergradient":
        return _override_estimator(spec, parts, value, key_span)
    if parts[0] == "meta" and len(parts) == 3 and parts[2] in ("init", "length"):
        decl = _named(spec, ast.MetaDecl, parts[1], key_span, "meta-parameter")
        if parts[2] == "init":
            return _replace(spec, decl, attrs.evolve(decl, init=value))
        return _replace(spec, decl, attrs.evolve(decl, type=_vector_length(decl, value, key_span)))
    if parts[0] == "meta":
        raise SpecErrors([BadArgument(key_span, "use --set meta.NAME.init=VALUE or meta.NAME.length=N")], "")
    _fail(key_span, f"unknown override root '{parts[0]}' (known: {', '.join(OVERRIDE_ROOTS)})", OVERRIDE_ROOTS, parts[0])


def apply_overrides(spec: ast.Spec, items) -> ast.Spec:
    """Every `--set` in order."""
    for item in items:
        spec = apply_override(spec, item)
    return spec

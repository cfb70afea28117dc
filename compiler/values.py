"""Compile-time values: constant folding of literal expressions and checking them against a declared
registry Param (type, choices, range). Errors are appended to a list, never raised one by one.

    >>> from mptc.compiler.parse import parse
    >>> from mptc.components.registry import Param
    >>> errors = []
    >>> check_value(Param("lr", "float", min=0), parse("1e-3", "<t>", start="expr"), errors, {})
    0.001
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mptc.compiler import ast
from mptc.errors import BadArgument, DuplicateName, OutOfRange, UnknownComponent, did_you_mean
from mptc.components.registry import ALL, REQUIRED, Component, Param

_BOOLS = {"true": True, "false": False}


def fold(expr):
    """The constant value of a literal expression (numbers, strings, lists, bare names as symbols)."""
    if isinstance(expr, ast.Number):
        return expr.value
    if isinstance(expr, ast.String):
        return expr.value
    if isinstance(expr, ast.Neg):
        inner = fold(expr.operand)
        return -inner if isinstance(inner, (int, float)) and not isinstance(inner, bool) else _NotConst
    if isinstance(expr, ast.ListExpr):
        items = [fold(i) for i in expr.items]
        return _NotConst if _NotConst in items else items
    if isinstance(expr, ast.Ref):
        return Symbol(expr.dotted)
    return _NotConst


class Symbol(str):
    """A bare name used as a value (`metric: auroc`)."""


_NotConst = object()
_FLOAT_MAX = int(sys.float_info.max)


def fits_float(value) -> bool:
    """Whether float() takes the number: an integer literal of 400 digits overflows it."""
    return not isinstance(value, int) or abs(value) <= _FLOAT_MAX


def _too_large(param: Param, expr) -> OutOfRange:
    return OutOfRange(expr.span, f"'{param.name}' is too large to be a number")


def _kind_name(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a name or string",
            "ints": "a list of integers", "floats": "a list of numbers", "dataset": "a data name",
            "strs": "a list of names or strings", "path": "a file or folder (a string)",
            "choice": "one of the listed names"}.get(kind, kind)


def _shown_value(value) -> str:
    """A constant as the spec writes it: `[16.5, 8]`, `"a"`, `auroc` (a name), the long ones cut.

        >>> _shown_value([16.5, 8]), _shown_value([]), _shown_value(["a", Symbol("b")])
        ('[16.5, 8]', '[]', '["a", b]')
    """
    if isinstance(value, list):
        text = "[" + ", ".join(_shown_value(v) for v in value) + "]"
        return text if len(text) <= 40 else text[:36] + " ...]"
    if isinstance(value, Symbol):
        return str(value)
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _type_error(param: Param, expr, got) -> BadArgument:
    shown = "a name" if isinstance(got, Symbol) else "an empty list" if got == [] else \
        _shown_value(got) if isinstance(got, list) else repr(got)
    alternatives = "".join(f" or {c}" for c in param.choices) if param.kind != "choice" else ""
    return BadArgument(expr.span, f"'{param.name}' must be {_kind_name(param.kind)}{alternatives}, got {shown}")


def _dashed(expr) -> str | None:
    """`a-b-c` read back from the subtraction of plain names it parses as, else None."""
    if isinstance(expr, ast.Ref) and len(expr.parts) == 1:
        return expr.parts[0]
    if isinstance(expr, ast.BinOp) and expr.op == "-":
        left, right = _dashed(expr.left), _dashed(expr.right)
        return f"{left}-{right}" if left and right else None
    return None


def _convert(param: Param, expr, value, errors, ctx):
    kind = param.kind
    if value is _NotConst:
        dashed = _dashed(expr)
        if dashed in param.choices:  # `hvp: forward-over-reverse` parses as a subtraction of names
            errors.append(BadArgument(expr.span, f"'{param.name}': a name with dashes must be quoted",
                                      hint=f'"{dashed}"'))
            return None
        errors.append(BadArgument(expr.span, f"'{param.name}' must be a constant value"))
        return None
    if kind != "choice" and param.choices and isinstance(value, str) and value in param.choices:
        return str(value)                                   # a named alternative, e.g. `scale: auto`
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, (bool, Symbol))
        return value if ok else errors.append(_type_error(param, expr, value))
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, Symbol)
        if ok and not fits_float(value):
            return errors.append(_too_large(param, expr))
        return float(value) if ok else errors.append(_type_error(param, expr, value))
    if kind == "bool":
        return _BOOLS[value] if value in _BOOLS else errors.append(_type_error(param, expr, value))
    if kind in ("ints", "floats"):
        return _convert_list(param, expr, value, errors)
    if kind == "str":
        return str(value) if isinstance(value, str) else errors.append(_type_error(param, expr, value))
    if kind == "strs":
        items = value if isinstance(value, list) else [value]
        ok = items and all(isinstance(v, str) for v in items)
        if not ok:
            return errors.append(_type_error(param, expr, value))
        twice = next((v for i, v in enumerate(items) if v in items[:i]), None)
        if twice is not None:                               # columns, tasks, splits: each named once
            return errors.append(BadArgument(expr.span, f"'{param.name}' names '{twice}' twice"))
        return [str(v) for v in items]
    if kind == "choice":
        return _convert_choice(param, expr, value, errors)
    if kind == "dataset":
        return _convert_dataset(param, expr, value, errors, ctx)
    if kind == "path":
        return _convert_path(param, expr, value, errors)
    if kind.startswith("call:"):
        return check_component(ALL[kind[5:]], expr, errors, ctx)
    return value


def _convert_list(param, expr, value, errors):
    want = int if param.kind == "ints" else (int, float)
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, want) and not isinstance(v, (bool, Symbol)) for v in items):
        return errors.append(_type_error(param, expr, value))
    if param.kind == "floats" and not all(fits_float(v) for v in items):
        return errors.append(_too_large(param, expr))
    return [float(v) for v in items] if param.kind == "floats" else items


def _convert_choice(param, expr, value, errors):
    if isinstance(value, str) and value in param.choices:
        return str(value)
    guess = did_you_mean(str(value), param.choices) if isinstance(value, str) else None
    errors.append(BadArgument(expr.span, f"'{param.name}' must be one of {', '.join(param.choices)}", hint=guess))
    return None


def _convert_dataset(param, expr, value, errors, ctx):
    datasets = ctx.get("datasets", {})
    if isinstance(value, Symbol) and value in datasets:
        return str(value)
    guess = did_you_mean(str(value), datasets) if isinstance(value, str) else None
    errors.append(BadArgument(expr.span, f"'{param.name}' must name a data declaration", hint=guess))
    return None


def spec_folder(span_path: str) -> Path | None:
    """The folder of the spec file a span is in, or None for text that has no file (`--set`, a string)."""
    path = Path(span_path)
    try:
        return Path(os.path.abspath(path.parent)) if path.is_file() else None
    except (OSError, ValueError):  # a "path" that cannot be one: `--set data.pt=...`, `<spec>`
        return None


def _convert_path(param, expr, value, errors):
    """A string naming an existing file or folder: the absolute path, relative paths resolved against the
    spec file's folder (the working directory for text that has no file: `--set`, Python strings)."""
    if not isinstance(value, str) or isinstance(value, Symbol):
        return errors.append(_type_error(param, expr, value))
    if param.default == "" and value == "":   # an optional path left empty: not given
        return value
    folder = spec_folder(expr.span.path)
    try:
        given = Path(value).expanduser()
        path = Path(os.path.abspath((folder or Path.cwd()) / given))
        found = path.exists()
    except (OSError, RuntimeError, ValueError) as e:  # `~nobody/x` (no such home), a NUL, a name too long
        return errors.append(BadArgument(expr.span, f"'{param.name}': not a usable path "
                                                    f"({getattr(e, 'strerror', None) or e})"))
    if found:
        return str(path)
    parent = path.parent if path.parent.is_dir() else None
    siblings = sorted(p.name for p in parent.iterdir()) if parent else []
    guess = did_you_mean(path.name, siblings)
    where = "" if parent else f" (nor does its folder '{given.parent}')"
    base = "" if given.is_absolute() else (f" (resolved against the spec's folder: {folder})" if folder
                                           else f" (resolved against the working directory: {Path.cwd()})")
    errors.append(BadArgument(expr.span, f"'{param.name}': no such file or folder '{value}'{where}{base}",
                              hint=str(given.parent / guess) if guess and str(given.parent) != "." else guess))
    return None


_INT_LIMIT = 2 ** 63 - 1  # what torch and numpy can hold; a size or count beyond it is a typo


def _check_range(param: Param, expr, value, errors):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > _INT_LIMIT:
        errors.append(OutOfRange(expr.span, f"'{param.name}' is too large: {len(str(abs(value)))} digits "
                                            f"(at most 2**63 - 1)"))
        return None
    low_bad = param.min is not None and (value < param.min or (param.min_exclusive and value == param.min))
    high_bad = param.max is not None and value > param.max
    if low_bad or high_bad:
        bound = (f"> {param.min}" if param.min_exclusive else f">= {param.min}") if low_bad else f"<= {param.max}"
        shown = int(value) if isinstance(value, float) and value.is_integer() else value  # `0`, not `0.0`
        errors.append(OutOfRange(expr.span, f"'{param.name}' must be {bound}, got {shown}"))
        return None
    return value


def check_value(param: Param, expr, errors: list, ctx: dict):
    """The checked value of `expr` for `param`, or None after appending an error."""
    if param.kind == "tensor":  # evaluated at run time (an augmentation's meta-parameter): the checker shapes it
        return expr
    if param.meta_expr and fold(expr) is _NotConst:  # an expression of meta-parameters: the checker shapes it
        return expr
    value = _convert(param, expr, fold(expr) if not param.kind.startswith("call:") else None, errors, ctx)
    if param.kind in ("ints", "floats") and value is not None:
        return value if all(_check_range(param, expr, v, errors) is not None for v in value) else None
    return _check_range(param, expr, value, errors) if value is not None else None


def check_args(comp: Component, call: ast.Call | None, errors: list, ctx: dict, span=None) -> dict:
    """Every declared parameter of `comp` with its checked value (defaults filled in)."""
    given: dict[str, tuple] = {}
    misspelt = set()  # a required parameter spelt wrong is reported once, as the unknown keyword
    positional = call.args if call else ()
    for i, expr in enumerate(positional):
        if i >= len(comp.params):
            errors.append(BadArgument(expr.span, f"{comp.name} takes at most {len(comp.params)} "
                                      f"positional argument{'s' if len(comp.params) != 1 else ''}"))
            continue
        given[comp.params[i].name] = (expr, expr)
    for kw in call.kwargs if call else ():
        if comp.param(kw.name) is None:
            known = [p.name for p in comp.params]
            listing = f" (it takes {', '.join(known)})" if known else " (it takes none)"
            misspelt.add(did_you_mean(kw.name, known))
            errors.append(BadArgument(kw.span, f"{comp.name} has no parameter '{kw.name}'{listing}",
                                      hint=did_you_mean(kw.name, known)))
        elif kw.name in given:
            errors.append(DuplicateName(kw.span, f"'{kw.name}' is given twice"))
        else:
            given[kw.name] = (kw, kw.value)
    return {p.name: _arg(p, given.get(p.name), comp, call, span, errors, ctx, misspelt) for p in comp.params}


def _arg(param, given, comp, call, span, errors, ctx, misspelt=()):
    if given is None:
        if param.default is REQUIRED and param.name not in misspelt:
            errors.append(BadArgument(call.span if call else span, f"{comp.name} needs '{param.name}'"))
        if param.kind.startswith("call:") and isinstance(param.default, str):
            return defaults(ALL[param.kind[5:]], param.default)
        return None if param.default is REQUIRED else param.default
    return check_value(param, given[1], errors, ctx)


def check_component(registry, expr, errors: list, ctx: dict):
    """A `name` or `name(args)` naming a component of `registry`: {"name": ..., "args": {...}} or None."""
    call = expr if isinstance(expr, ast.Call) else None
    ref = call.func if call else expr
    if not isinstance(ref, ast.Ref):
        errors.append(BadArgument(expr.span, f"expected a {registry.kind} name"))
        return None
    comp = registry.get(ref.dotted)
    if comp is None:
        errors.append(UnknownComponent(ref.span, f"unknown {registry.kind} '{ref.dotted}' "
                                       f"(known: {', '.join(registry.names())})",
                                       hint=did_you_mean(ref.dotted, registry.names())))
        return None
    return {"name": comp.name, "args": check_args(comp, call, errors, ctx, span=expr.span)}


def defaults(registry, name: str) -> dict:
    """{"name", "args"} of a component called with no arguments (nested defaults expanded)."""
    return {"name": name, "args": check_args(registry.get(name), None, [], {})}

"""The one errors module of mptc.

Errors carry data (a span, a message, a hint), never formatting: only the CLI renders them
(`mptc.cli.render`). Compile-time checks collect every error of a file and raise one `SpecErrors`.

    >>> e = UnknownName(Span("a.mpt", 3, 7, 3, 10), "unknown name 'enc'", hint="encoder")
    >>> e.hint
    'encoder'
"""
from __future__ import annotations

import difflib

import attrs


@attrs.frozen
class Span:
    """A region of a source file; lines and columns are 1-based, `end_col` exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int


NO_SPAN = Span("<none>", 0, 0, 0, 0)


def did_you_mean(name: str, candidates) -> str | None:
    """The closest candidate to a misspelt name, or None.

    >>> did_you_mean("encodr", ["encoder", "pt_head"])
    'encoder'
    """
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return found[0] if found else None


class MptcError(Exception):
    """The root of every error mptc raises on purpose."""


class SpecError(MptcError):
    """A user mistake located in a spec (or on the command line, with a synthetic source)."""

    level = "error"  # how the renderer labels it (a Note says "note")

    def __init__(self, span: Span, message: str, hint: str | None = None, note: str | None = None):
        super().__init__(message)
        self.span, self.message, self.hint, self.note = span, message, hint, note


class SyntaxProblem(SpecError):
    """The text does not follow grammar/mpt.lark."""


class UnknownName(SpecError):
    """A reference to a name that no declaration introduces."""


class UnknownComponent(SpecError):
    """A model, head, dataset, loss, optimizer or estimator that no registry holds."""


class BadArgument(SpecError):
    """An unknown keyword, a missing required one, a wrong arity or a value of the wrong type."""


class DuplicateName(SpecError):
    """Two declarations of one name, or one clause given twice."""


class ShapeMismatch(SpecError):
    """Shapes that cannot broadcast, or a vector whose length disagrees with what it weights."""


class OutOfRange(SpecError):
    """A value outside its allowed range (lr <= 0, steps < 1, ...)."""


class Cycle(SpecError):
    """`let` definitions that refer to themselves."""


class MissingPart(SpecError):
    """A required declaration or clause is absent."""


class Unsupported(SpecError):
    """A construct the language has a syntax for but that mptc does not execute yet."""


class UnusedMeta(SpecError):
    """A meta-parameter no loss depends on: its hypergradient would always be zero."""


class PluginError(SpecError):
    """Code a spec names (`import`) that cannot be found or raised, or a user component that raised."""


class Note(SpecError):
    """Not an error: a remark `mptc check` prints beside a spec that checks (e.g. a shape known only at run
    time). Never raised; collected by the checker."""

    level = "note"


class SpecErrors(MptcError):
    """Every error found in one spec, sorted by position."""

    def __init__(self, errors: list[SpecError], source: str):
        self.errors = sorted(errors, key=lambda e: (e.span.line, e.span.col))
        self.source = source
        super().__init__(f"{len(self.errors)} error(s)")


class RunError(MptcError):
    """A fault while executing a plan: data that cannot be read, a non-finite value, divergence."""


class Unresumable(RunError):
    """A run's checkpoint that no `--resume` can continue from (a damaged file): the folder is kept as it
    is, and no hint to resume it is printed."""
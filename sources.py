"""Where errors point: the texts of spec files and `--set` items, the one reader of spec files, and the
one renderer of located errors (`path:line:col: message`, the source line, carets, a did-you-mean).

Only the command line prints what `render` returns (and the Python API puts it in its exception), so the
compiler stays free of formatting. A `Sources` object is made per command and passed to `render`; an
override's synthetic path `--set ITEM` is its own text, so no module keeps a table of them.

    >>> from mptc.errors import Span, UnknownName
    >>> e = UnknownName(Span("--set trian.seed=1", 1, 1, 1, 6), "unknown override root 'trian'", hint="train")
    >>> print(render(e, Sources()))
    --set trian.seed=1:1:1: error: unknown override root 'trian'
    1 | trian.seed=1
      | ^^^^^
      = did you mean 'train'?
"""
from __future__ import annotations

from pathlib import Path

from mptc.compiler.language import OVERRIDE_PREFIX
from mptc.errors import RunError, SpecError



class Sources:
    """The texts errors point into: those given, `--set ITEM` items, and spec files read on demand."""

    def __init__(self, texts: dict[str, str] | None = None):
        self._texts = dict(texts or {})

    def text(self, path: str) -> str:
        if path not in self._texts:
            self._texts[path] = (path[len(OVERRIDE_PREFIX):] if path.startswith(OVERRIDE_PREFIX)
                                 else _read_quietly(path))
        return self._texts[path]


def render(error: SpecError, sources: Sources) -> str:
    """`path:line:col: message`, the source line, carets under the span, a did-you-mean and a note."""
    s = error.span
    out = [f"{s.path}:{s.line}:{s.col}: {error.level}: {error.message}"]
    lines = source_lines(sources.text(s.path))
    if 1 <= s.line <= len(lines):
        text = "".join(ch if ch.isprintable() else " " for ch in lines[s.line - 1])  # a tab, \x0c: one column
        end = s.end_col if s.end_line == s.line else len(text) + 1
        width = max(1, min(end, len(text) + 1) - s.col)
        gutter = " " * len(str(s.line))
        out += [f"{s.line} | {text}", f"{gutter} | {' ' * (s.col - 1)}{'^' * width}"]
    if error.hint:
        out.append(f"  = did you mean '{error.hint}'?")
    if error.note:
        out.append(f"  = note: {error.note}")
    return "\n".join(out)


def source_lines(text: str) -> list[str]:
    r"""The lines of a spec as the parser numbers them: lark counts "\n" alone, where str.splitlines also
    splits at \x0c, \x1c-\x1e, \x85, U+2028 and U+2029; a CRLF line's "\r" is not shown.

    >>> source_lines("a\x0cb\r\nc\u2028d")
    ['a\x0cb', 'c\u2028d']
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_spec(path: str) -> str:
    """The text of a spec file, without a UTF-8 byte-order mark; a RunError naming the file otherwise.
    The one reader of spec files (cli, commands, sweep, api)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"cannot read spec '{path}': no such file") from None
    except IsADirectoryError:
        raise RunError(f"cannot read spec '{path}': it is a directory") from None
    except UnicodeDecodeError as e:
        raise RunError(f"cannot read spec '{path}': not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RunError(f"cannot read spec '{path}': {e.strerror or type(e).__name__}") from None
    return text.removeprefix("\ufeff")


def _read_quietly(path: str) -> str:
    """A file's text for showing its lines under an error, or "" where it cannot be read."""
    try:
        return read_spec(path)
    except RunError:
        return ""

"""Loading a user's own code: the files and modules a spec names (`import "components.py"`, `import
pkg.components`), those `--plugin` names, and installed packages' entry points. Torch-free: importing a
user's file imports torch only when that file does.

What loads, and when (docs/components.md):
- a spec's `import` declarations, when the spec is checked (before any component is looked up);
- `mptc ... --plugin MODULE_OR_FILE`, before the command compiles anything;
- the entry points of group `mptc.components` of installed packages, once per process, the first time
  a lookup misses (a spec names a component that neither mptc nor the code above registered). A spec
  that uses only known names never loads them; `MPTC_NO_ENTRY_POINTS=1` turns them off.
Nothing else: a spec cannot load code it does not name.

    >>> try:
    ...     import_code("nowhere.py", folder=None)
    ... except PluginProblem as e:
    ...     print(e.message.split(" (")[0])
    cannot import "nowhere.py": no such file
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path

from mptc.components.registry import ALL, FILE_MODULE_PREFIX
from mptc.errors import RunError, did_you_mean

GROUP = "mptc.components"
LOADED: dict[str, str] = {}  # origin (a file's absolute path, a module's name) -> how: import, --plugin, entry point
_ENTRY_POINTS = {"loaded": False}


class PluginProblem(Exception):
    """Code that cannot be imported: a message (and a hint), located by the caller (the checker puts it at
    the spec's `import`). `__cause__` is the user's exception, if one was raised."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def is_file(target: str) -> bool:
    """Whether a `--plugin` target names a file (a path ending in .py) rather than a module.

        >>> is_file("components.py"), is_file("lib/x.py"), is_file("my_package.components")
        (True, True, False)
    """
    return target.endswith(".py")


def import_code(target: str, folder: Path | None, file: bool = True, how: str = "import") -> str:
    """Imports a file (`file`: a path, relative ones against `folder`, the working directory when None)
    or a module; returns its origin (the file's absolute path, or the module's name). Raises
    PluginProblem naming what is missing or what the code raised."""
    origin = _import_file(target, folder) if file else _import_module(target, folder)
    LOADED.setdefault(origin, how)
    return origin


def load(target: str, how: str = "--plugin") -> str:
    """`--plugin TARGET` (and the Python API): a module name, or a .py file relative to the working
    directory. Returns its origin; raises PluginProblem."""
    return import_code(target, None, file=is_file(target), how=how)


def _base(folder: Path | None) -> str:
    return (f"resolved against the spec's folder: {folder}" if folder is not None
            else f"resolved against the working directory: {Path.cwd()}")


def _import_file(given: str, folder: Path | None) -> str:
    path = Path(os.path.abspath((folder or Path.cwd()) / Path(given).expanduser()))
    shown = f'"{given}"'
    if path.is_dir():
        raise PluginProblem(f"cannot import {shown}: it is a folder; name a .py file in it, or import a "
                            f"package by its module name ({_base(folder)})")
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        guess = did_you_mean(path.name, siblings)
        hint = str(Path(given).parent / guess) if guess and str(Path(given).parent) != "." else guess
        raise PluginProblem(f"cannot import {shown}: no such file ({_base(folder)})", hint=hint)
    if path.suffix != ".py":
        raise PluginProblem(f"cannot import {shown}: not a Python file (.py)")
    name = FILE_MODULE_PREFIX + re.sub(r"\W", "_", path.stem) + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    if name not in sys.modules:
        _on_path(path.parent)                        # the file imports the modules beside it, as a script does
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _run(lambda: spec.loader.exec_module(module), shown, name, path)
    return str(path)


def _import_module(name: str, folder: Path | None) -> str:
    if name.endswith(".py"):                         # `import components.py`: a file, which is quoted
        raise PluginProblem(f"cannot import {name}: a module's name has no .py; a file is imported by its "
                            f"path in quotes", hint=f'"{name}"')
    if folder is not None:
        _on_path(folder)                             # a package beside the spec
    if name not in sys.modules:
        importlib.invalidate_caches()
        _run(lambda: importlib.import_module(name), name, name, None)
    return name


def _on_path(folder: Path) -> None:
    """Appends a folder to sys.path (last: an installed module of the same name keeps precedence)."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
        importlib.invalidate_caches()


def _run(execute, shown: str, name: str, path: Path | None) -> None:
    """Runs an import; on failure, sys.modules and every registry are as they were before it."""
    entries = {kind: dict(r._entries) for kind, r in ALL.items()}
    try:
        execute()
    except BaseException as e:
        sys.modules.pop(name, None)
        for kind, r in ALL.items():
            r._entries.clear()
            r._entries.update(entries[kind])
        if isinstance(e, SystemExit):                       # exit() at import: refused, never our exit status
            raise PluginProblem(f"cannot import {shown}: it called sys.exit({e.code!r})") from None
        if not isinstance(e, Exception):
            raise
        if isinstance(e, ModuleNotFoundError) and path is None and e.name and (
                name == e.name or name.startswith(e.name + ".")):
            raise PluginProblem(f"cannot import {shown}: no such module on the Python path") from None
        raise PluginProblem(f"cannot import {shown}: it raised {raised(e, path)}") from user_frames(e)


def user_frames(e: BaseException) -> BaseException:
    """`e` with the leading frames of mptc and of importlib dropped from its traceback, so that `--debug`
    starts at the user's code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None and _ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return e.with_traceback(tb)


_MPTC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ours(filename: str) -> bool:
    return filename.startswith("<frozen") or os.path.abspath(filename).startswith(_MPTC + os.sep)


def raised(e: BaseException, path: Path | None = None) -> str:
    """`Type: message (file:line)`: an exception of user code as one line, at the deepest frame in `path`
    (or in any file outside mptc and the standard library when no path is given).

        >>> raised(ValueError("width must be even"))
        'ValueError: width must be even'
    """
    frames = traceback.extract_tb(e.__traceback__)
    if path is not None:
        frames = [f for f in frames if _same(f.filename, path)]
    at = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if path is not None and frames else ""
    return f"{type(e).__name__}: {e}{at}"


def _same(filename: str, path: Path) -> bool:
    try:
        return os.path.samefile(filename, path)
    except OSError:
        return False


def load_entry_points() -> bool:
    """Loads every entry point of group `mptc.components`, once per process; True when this call loaded
    any. An entry point names a module (importing it registers) or a function (called with no arguments).
    One that raises is a RunError naming it and its package."""
    if _ENTRY_POINTS["loaded"] or os.environ.get("MPTC_NO_ENTRY_POINTS"):
        return False
    _ENTRY_POINTS["loaded"] = True
    from importlib.metadata import entry_points
    found = list(entry_points(group=GROUP))
    for ep in found:
        package = getattr(ep.dist, "name", None)
        origin = ep.value.partition(":")[0].strip()
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()
        except Exception as e:
            of = f" of package {package}" if package else ""
            raise RunError(f"entry point '{ep.name} = {ep.value}' ({GROUP}{of}) raised {raised(e)}; "
                           f"MPTC_NO_ENTRY_POINTS=1 turns entry points off") from e
        LOADED.setdefault(origin, "entry point")
    return bool(found)

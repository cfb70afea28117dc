"""mptc: the meta-parameterized pre-training compiler.

    >>> import mptc
    >>> mptc.__version__
    '0.1.0'

The Python API (docs/python.md) loads on first use, so `import mptc` stays cheap for the CLI:
`mptc.Spec`, `mptc.E`, `mptc.x`, `mptc.y`, `mptc.scalar`, `mptc.vector`, `mptc.network`, `mptc.factored`,
`mptc.run`, `mptc.compile_text`, `mptc.CompileError` (from `mptc.api`) and `mptc.space` (search spaces).
"""
__version__ = "0.1.0"

_API = ("Spec", "Expr", "E", "x", "y", "scalar", "vector", "network", "factored", "run", "compile_text",
        "CompileError")


def __getattr__(name):
    import importlib
    if name in _API:
        return getattr(importlib.import_module("mptc.api"), name)
    if name == "space":
        return importlib.import_module("mptc.space")
    raise AttributeError(f"module 'mptc' has no attribute {name!r}")

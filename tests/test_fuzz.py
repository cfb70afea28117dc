"""Fuzzing the command line: mutated specs (tokens deleted, duplicated, swapped; random and non-UTF-8 bytes;
nesting thousands deep; numbers of thousands of digits) never raise, never print a traceback, never hang,
and exit 0 or 2 (`fmt --check` also 1). In process through `mptc.cli.main`, each call under a time limit."""
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptc.cli import main
from mptc.compiler.parse import parse
from mptc.compiler.printer import format_text
from mptc.errors import Span

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("specs/**/*.mpt"))] + [
    "space aux = data{task, domain} x transform{bert_op, mask, none} x output{denoise, end_task}\n"
    "  exclude transform in {mask, none} and output == end_task\n"
    "meta aux_w: factored(aux) = 0.0 in [-1, 1]\n"
    "auxiliary aux { data pt batch 8 loss mean(x) sample 2 per step weights softmax(aux_w) end_task_weight 0.5 }\n",
]
TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|[0-9.]+(?:[eE][-+]?[0-9]+)?|\w+|\*\*|[=!]=|.', re.S)
DEEP = ["(" * 10_000 + "x" + ")" * 10_000, "-" * 10_000 + "x", "[" * 5_000 + "]" * 5_000, "f(" * 3_000 + ")" * 3_000,
        " + ".join(["x"] * 3_000), " ** ".join(["2"] * 3_000), "-" * 101 + "1", "[" * 99 + "]" * 99]
HUGE = ["1e400", "-1e400", "1e-400", "9" * 400, "9" * 5_000, "1" + "0" * 100, "0" * 1_000 + "1", ".0e99999999999",
        "1" + "0" * 100_000, "4294967296", "18446744073709551617"]
JUNK = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\r\n", b"\t", b"\x0c", b"\\", b'"',
        b"#", b"\xe2\x80\xa8", "é".encode(), b"}", b"{", b")", b"(", b",", b":"]
TIME_LIMIT_S = 10


@contextmanager
def time_limit(seconds: float):
    """Fails the example instead of hanging the suite (SIGALRM: the main thread, on POSIX)."""
    def expire(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def mutated(draw) -> bytes:
    tokens = [t.encode() for t in TOKEN.findall(draw(st.sampled_from(SEEDS)))]
    for _ in range(draw(st.integers(1, 4))):
        i, j = (draw(st.integers(0, len(tokens) - 1)) for _ in range(2))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "bytes", "junk", "deep", "huge", "number"]))
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "bytes":
            tokens.insert(i, draw(st.binary(min_size=1, max_size=8)))
        elif kind == "junk":
            tokens.insert(i, draw(st.sampled_from(JUNK)))
        elif kind == "deep":
            tokens.insert(i, draw(st.sampled_from(DEEP)).encode())
        else:  # a number anywhere, or in place of one
            numbers = [k for k, t in enumerate(tokens) if t[:1].isdigit()]
            at = draw(st.sampled_from(numbers)) if kind == "number" and numbers else i
            tokens[at:at + (kind == "number" and bool(numbers))] = [draw(st.sampled_from(HUGE)).encode()]
        if not tokens:
            tokens = [b""]
    return b"".join(tokens)


def run_cli(args, capsys) -> int:
    with time_limit(TIME_LIMIT_S):
        code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code


def assert_survives(data: bytes, path: Path, capsys):
    path.write_bytes(data)
    assert run_cli(["check", str(path)], capsys) in (0, 2)
    assert run_cli(["space", str(path)], capsys) in (0, 2)
    assert run_cli(["fmt", "--check", str(path)], capsys) in (0, 1, 2)
    try:
        text = data.decode("utf-8")
        with time_limit(TIME_LIMIT_S):
            spec = parse(text, "f.mpt")
    except Exception:  # not UTF-8, or a syntax error: the CLI calls above covered it
        return
    with time_limit(TIME_LIMIT_S):  # what fmt writes parses back to the same spec
        formatted = format_text(text, "f.mpt")
        assert format_text(formatted, "f.mpt") == formatted
        assert _plain(parse(formatted, "f.mpt")) == _plain(spec)


def _plain(node):
    """The node with its spans blanked (as test_fmt.strip)."""
    if isinstance(node, Span):
        return None
    if isinstance(node, tuple):
        return tuple(_plain(n) for n in node)
    if attrs.has(type(node)):
        return attrs.evolve(node, **{f.name: _plain(getattr(node, f.name)) for f in attrs.fields(type(node))})
    return node


@settings(max_examples=150, deadline=5_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=mutated())
def test_mutated_specs_never_crash_the_cli(data, tmp_path, capsys):
    assert_survives(data, tmp_path / "f.mpt", capsys)


QUICKSTART = (ROOT / "specs" / "quickstart.mpt").read_text(encoding="utf-8")


@pytest.mark.parametrize("data", [
    *(f"let a = {d}\n".encode() for d in DEEP),
    *(QUICKSTART.replace("adam(lr: 1e-3)", f"adam(lr: {n})").encode() for n in HUGE),
    *(QUICKSTART.replace("= 0.0", f"= {n} in [-{n}, {n}]").encode() for n in HUGE[:6]),
    QUICKSTART.replace("vector[100]", "vector[" + "9" * 400 + "]").encode(),
    QUICKSTART.replace("steps 10", "steps " + "9" * 5_000).encode(),
    QUICKSTART.encode("utf-16"), b"\xef\xbb\xbf" + QUICKSTART.encode(), QUICKSTART.encode().replace(b"\n", b"\r\n"),
    b'data d = ecg.ptbxl(root: "~nobody_here/x")', b'data d = ecg.ptbxl(root: "' + b"x" * 5_000 + b'")',
    b'data d = images.mnist(root: "a\x00b")', b'data d = ecg.ptbxl(root: "/etc/passwd/x")',
    QUICKSTART.encode()[:-40] + b"\xff\xfe", b"", b"\x00" * 100, b"#" * 10_000, b"space s = " +
    " x ".join(f"f{i}{{a, b, c, d, e, f, g, h}}" for i in range(9)).encode(),
], ids=lambda d: repr(d[:24]))
def test_pathological_specs(data, tmp_path, capsys):
    assert_survives(data, tmp_path / "f.mpt", capsys)


# ---- what the crashes found here became: errors that say why ------------------------------------
@pytest.mark.parametrize("text, col, message", [
    ("let a = " + "-" * 10_000 + "x", 9 + 99, "syntax error: nested more than 100 levels deep"),  # was RecursionError
    ("let a = " + "[" * 200 + "]" * 200, 9 + 99, "syntax error: nested more than 100 levels deep"),
    ("let a = " + " + ".join(["x"] * 500), 9, "syntax error: nested more than 100 levels deep"),
    ("let a = " + "9" * 5_000, 9, "syntax error: a number longer than 4300 digits"),  # was int()'s own message
])
def test_syntax_limits(text, col, message):
    from mptc.errors import SyntaxProblem
    with pytest.raises(SyntaxProblem) as info:
        parse(text, "f.mpt")
    assert (info.value.span.line, info.value.span.col, info.value.message) == (1, col, message)


@pytest.mark.parametrize("old, new, message", [
    ("adam(lr: 1e-3)", "adam(lr: " + "9" * 400 + ")", "'lr' is too large to be a number"),  # was OverflowError
    ("= 0.0", "= " + "9" * 400, "a meta-parameter's initial value must be a number"),  # was OverflowError in lower
])
def test_integers_beyond_floats_are_errors(old, new, message, tmp_path, capsys):
    path = tmp_path / "f.mpt"
    path.write_text(QUICKSTART.replace(old, new), encoding="utf-8")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err

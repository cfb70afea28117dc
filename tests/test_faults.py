"""Faults from a bad-input campaign: each is one named line (`mptc: error: ...`, exit 2) or a named stop,
never a traceback, never code run from a data file, never a run directory that looks finished."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from mptc.cli import main
from mptc.sources import read_spec as _read
from mptc.errors import RunError
from mptc.runtime import executor, rundir

from tests.conftest import tiny_spec  # noqa: E402

TINY = tiny_spec(meta_steps=3, log_every=2, against="no_pretrain")
MPTC = [sys.executable, "-m", "mptc"]


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.mpt"
    path.write_text(TINY)
    return path


def _variant(tmp_path, old, new, name="v.mpt"):
    assert old in TINY
    path = tmp_path / name
    path.write_text(TINY.replace(old, new))
    return path


def _run(spec, out, *extra):
    return main(["run", str(spec), "--out", str(out), "--quiet", *extra])


def _one_error(capsys, *fragments) -> str:
    """The stderr of a refused command: one `mptc: error:` line holding every fragment, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("mptc: error: "), err
    assert all(f in err for f in fragments), err
    return err


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "run")


def _strict(text: str):
    """json.loads that refuses NaN and Infinity, as every other JSON reader does."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# ---- 1. a data file never runs code -------------------------------------------------------------------
class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


BIO_SPEC = """\
data pt = graphs.bio(root: "{root}")
data ft = graphs.bio(root: "{root}", task: finetune)
model encoder = gin(layers: 2, hidden: 8)
head pt_head = linear(out: 5000)
head ft_head = linear(out: 40)
meta w: vector[5000] = 0.0
pretrain {{ data pt batch 4  loss mean(w * bce(pt_head(encoder(x)), y)) }}
finetune {{ data ft.train  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 update ft_head }}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 1 device cpu
"""


@pytest.mark.parametrize("payload", [_Exec, _System])
@pytest.mark.parametrize("zipfile", [False, True])
@pytest.mark.parametrize("protocol", [2, 4])   # protocol 2 spells exec `__builtin__.exec`, 4 `builtins.exec`
def test_a_crafted_bio_file_runs_no_code(tmp_path, capsys, payload, zipfile, protocol):
    from mptc.runtime import graphs as G
    marker = tmp_path / "MARKER"
    (tmp_path / G.BIO_FILE).parent.mkdir(parents=True)
    torch.save((payload(marker), {}), tmp_path / G.BIO_FILE, _use_new_zipfile_serialization=zipfile,
               pickle_protocol=protocol)
    with pytest.raises(ValueError, match="never runs code"):
        G.bio(str(tmp_path))
    assert not marker.exists()
    spec = tmp_path / "bio.mpt"
    spec.write_text(BIO_SPEC.format(root=tmp_path))
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "data 'pt'", str(tmp_path / G.BIO_FILE), "never runs code")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_damaged_bio_cache_is_converted_again(tmp_path, capsys):
    """The cache is weights-only too; a damaged one is rebuilt from the source, not a traceback."""
    from mptc.runtime import graphs as G
    (tmp_path / G.BIO_FILE).parent.mkdir(parents=True)
    torch.save(({"x": torch.ones(2, 1)}, {"x": torch.tensor([0, 1, 2])}), tmp_path / G.BIO_FILE)
    cache = (tmp_path / G.BIO_FILE).with_name(G.BIO_CACHE)
    cache.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="missing field"):   # the source is read again (and is incomplete)
        G.bio(str(tmp_path))
    assert "bio cache" in capsys.readouterr().err


# ---- 2. device cuda without CUDA ---------------------------------------------------------------------
def test_device_cuda_without_cuda_is_a_named_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = _variant(tmp_path, "device cpu", "device cuda")
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "device cuda: this torch has no CUDA (")
    assert _leftovers(tmp_path) == []


# ---- 3. non-finite results ---------------------------------------------------------------------------
def test_division_by_zero_in_a_loss_stops_the_run(tmp_path, capsys):
    spec = _variant(tmp_path, "let task_weight = 2 * sigmoid(w)", "let task_weight = 2 * sigmoid(w) / (0 * w)")  # a literal 0 is a check error
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "meta-parameter 'task_weight' is not finite", "inf")
    assert _leftovers(tmp_path) == []


def test_a_nan_final_pt_loss_stops_the_run(spec, tmp_path, capsys, monkeypatch):
    real = executor.Trainer.pt_step
    monkeypatch.setattr(executor.Trainer, "pt_step", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "the PT loss is nan at the end of meta-training (meta-step 3)")
    assert _leftovers(tmp_path) == []


def test_a_nan_evaluation_metric_stops_the_run(spec, tmp_path, capsys, monkeypatch):
    from mptc.runtime import evaluate
    real, calls = evaluate.finetune_evaluate, []

    def nan_at_meta_seed_1(*args, **kw):                # 'meta' is evaluated first: its second call
        calls.append(kw["seed"])
        return float("nan") if len(calls) == 2 else real(*args, **kw)
    monkeypatch.setattr(evaluate, "finetune_evaluate", nan_at_meta_seed_1)
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "evaluation: the auroc of 'meta' is not finite at seed 1 (nan)")
    assert _leftovers(tmp_path) == []


def test_every_json_file_is_standard_json_and_a_skipped_step_logs_null(spec, tmp_path, monkeypatch):
    """One non-finite hypergradient (meta-step 2) is skipped and the run finishes: metrics.jsonl writes
    the non-finite values as null, and every file parses strictly."""
    real = executor.Trainer.hypergradient
    calls = []

    def poisoned_once(self, *args):
        l_val, hg, info = real(self, *args)
        calls.append(1)
        return l_val, ({n: g * float("nan") for n, g in hg.items()} if len(calls) == 2 else hg), info
    monkeypatch.setattr(executor.Trainer, "hypergradient", poisoned_once)
    out = tmp_path / "run"
    assert _run(spec, out) == 0
    for name in ("ir.json", "meta.json", "eval.json", "diagnostics.json"):
        _strict((out / name).read_text())
    rows = [_strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r["skipped"]]
    assert [r["meta_step"] for r in skipped] == [2] and skipped[0]["hypergrad_norm"] is None


def test_write_json_names_a_non_finite_value(tmp_path):
    with pytest.raises(RunError, match=r"cannot write eval.json: meta.values\[1\] is not a finite number"):
        rundir.write_json(tmp_path / "eval.json", {"meta": {"values": [0.5, float("inf")]}})
    assert list(tmp_path.iterdir()) == []
    log = rundir.MetricsLog(tmp_path / "metrics.jsonl")
    log.log(step=1, pt_loss=float("nan"), ft_val_loss=float("-inf"), meta_step=1)
    log.close()
    assert _strict((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "pt_loss": None,
                                                                 "ft_val_loss": None, "meta_step": 1}


def test_a_search_whose_every_trial_is_nan_is_a_named_error(tmp_path, capsys):
    spec = _variant(tmp_path, "meta_optimizer adam(lr: 0.1)",
                    "meta_optimizer adam(lr: 0.1)\nhypergradient pretrain: search(random, trials: 2)")
    spec.write_text(spec.read_text().replace("let task_weight = 2 * sigmoid(w)", "let task_weight = sigmoid(w) / (0 * w)"))
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "search: every trial's meta-objective was non-finite")


# ---- 4. two runs, one --out --------------------------------------------------------------------------
def _wait_for(predicate, seconds=120):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _slow(tmp_path, spec):
    slow = tmp_path / "slow.mpt"
    slow.write_text(spec.read_text().replace("meta_steps 3", "meta_steps 100000"))
    return slow


def _start(spec, out, **kw):
    return subprocess.Popen([*MPTC, "run", str(spec), "--out", str(out), "--quiet"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, **kw)


def test_a_second_run_into_a_claimed_out_is_refused_at_once(spec, tmp_path, capsys):
    out = tmp_path / "run"
    first = _start(_slow(tmp_path, spec), out)
    try:
        _wait_for(lambda: list(tmp_path.glob(".run.partial-*/metrics.jsonl")))
        assert sorted(os.listdir(out)) == ["RUNNING"]                # claimed, and never looks finished
        assert json.loads((out / "RUNNING").read_text())["pid"] == first.pid
        start = time.perf_counter()
        assert _run(spec, out) == 2
        assert time.perf_counter() - start < 2                        # refused before any training
        _one_error(capsys, f"run directory '{out}' is being written by another run (PID {first.pid})")
        assert [p.name for p in tmp_path.glob(".run.partial-*")] == [f".run.partial-{first.pid}"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143 and _leftovers(tmp_path) == []


def test_two_runs_started_together_into_one_out(spec, tmp_path):
    out = tmp_path / "run"
    procs = [_start(spec, out) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser and f"run directory '{out}'" in loser, loser
    assert (out / "meta.json").is_file() and not (out / "RUNNING").exists()
    assert _leftovers(tmp_path) == ["run"]


# ---- 5. leftovers: SIGHUP, SIGKILL, an early Ctrl-C -------------------------------------------------
def test_sighup_stops_a_run_and_leaves_nothing(spec, tmp_path):
    proc = _start(_slow(tmp_path, spec), tmp_path / "run")
    _wait_for(lambda: list(tmp_path.glob(".run.partial-*/metrics.jsonl")))
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and err.strip().splitlines()[-1] == "mptc: terminated (hang-up)", err
    assert "Traceback" not in err and _leftovers(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_staging_folder_is_removed_by_the_next_run(spec, tmp_path, capsys):
    pid = _dead_pid()
    stale = tmp_path / f".old.partial-{pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "metrics.jsonl").write_text("{}\n")
    claimed = tmp_path / "old"
    claimed.mkdir()
    (claimed / "RUNNING").write_text(json.dumps({"pid": pid}))
    alive = tmp_path / f".live.partial-{os.getppid()}"               # a live PID's folder is left alone
    alive.mkdir()
    assert _run(spec, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert f"mptc: removed '{stale}', left by run {pid} which is no longer running" in err
    assert not stale.exists() and not claimed.exists() and alive.exists()


def test_after_sigkill_the_same_out_can_be_run_again(spec, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(_slow(tmp_path, spec), out)
    _wait_for(lambda: list(tmp_path.glob(".run.partial-*/metrics.jsonl")))
    proc.kill()
    proc.communicate(timeout=60)
    assert (out / "RUNNING").is_file() and list(tmp_path.glob(".run.partial-*"))  # what SIGKILL leaves
    assert _run(spec, out) == 0
    assert f"left by run {proc.pid} which is no longer running" in capsys.readouterr().err
    assert (out / "meta.json").is_file() and _leftovers(tmp_path) == ["run"]


def test_an_early_ctrl_c_is_never_a_mptc_traceback(spec, tmp_path):
    """Ctrl-C from 20 ms on: `mptc: interrupted`, exit 130, nothing left. (One landing inside CPython's
    own start-up, before the first line of mptc runs, is CPython's: none of its frames is mptc's.)"""
    handled = 0
    for i, delay in enumerate((0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.35, 0.5, 0.8)):
        proc = _start(spec, tmp_path / f"run{i}")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:                         # the run finished before the signal came
            shutil.rmtree(tmp_path / f"run{i}")
        elif proc.returncode == 130:
            handled += 1
            assert err == "mptc: interrupted\n", (delay, err)
        else:
            assert "mptc/" not in err and "mptc:" not in err, (delay, proc.returncode, err)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".run", "run"))], (delay, err)
    assert handled >= 3


SWALLOWED = """
import os, signal, sys, time, weakref
from mptc.__main__ import _redeliver
sys.unraisablehook = _redeliver
class A: pass
a = A()
r = weakref.ref(a, lambda _: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C inside a weakref callback
try:
    del a
    time.sleep(5)
    print("lost")
except KeyboardInterrupt:
    print("raised")
"""


def test_a_ctrl_c_python_would_ignore_is_raised_again():
    """Importing torch runs weakref callbacks; a Ctrl-C there is "Exception ignored" and the run went on."""
    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60)
    assert done.stdout == "raised\n" and "Exception ignored" not in done.stderr, done


# ---- 6. file-system and data-file faults -------------------------------------------------------------
def test_an_unreadable_spec_is_a_named_error(spec, capsys, monkeypatch):
    real = type(spec).read_text

    def denied(self, *a, **k):
        if self.name == spec.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(type(spec), "read_text", denied)
    assert main(["check", str(spec)]) == 2
    _one_error(capsys, f"cannot read spec '{spec}': Permission denied")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_spec_file_is_a_named_error(spec, capsys):
    spec.chmod(0)
    try:
        assert main(["check", str(spec)]) == 2
    finally:
        spec.chmod(0o644)
    _one_error(capsys, f"cannot read spec '{spec}': Permission denied")


@pytest.mark.parametrize("where, fragment", [
    (lambda t: "/sys/mptc-run", "cannot create the run directory '/sys/mptc-run'"),
    (lambda t: "/proc/mptc-run", "cannot create the run directory '/proc/mptc-run'"),
    (lambda t: str(t / "tiny.mpt" / "run"), "a part of the path is a file, not a folder"),
    (lambda t: str(t / "tiny.mpt" / "deeper" / "run"), "a part of the path is a file, not a folder"),
    (lambda t: str(t / ("r" * 250)), "is too long"),
])
def test_an_out_that_cannot_be_created_is_a_named_error(spec, tmp_path, capsys, where, fragment):
    assert _run(spec, where(tmp_path)) == 2
    _one_error(capsys, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mpt"]


def test_a_spec_with_a_byte_order_mark_is_read_without_it(spec, tmp_path, capsys):
    bom = tmp_path / "bom.mpt"
    bom.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert _read(str(bom)) == TINY
    assert main(["check", str(bom)]) == 0
    import mptc
    assert mptc.compile_text(_read(str(bom)), str(bom)).name == "tiny"


def _idx(array: np.ndarray) -> bytes:
    import struct
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def _mnist(root, images=None, n=4):
    rng = np.random.default_rng(0)
    for stem in ("train", "t10k"):
        (root / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)) if images is None else images))
        (root / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(n, dtype=np.uint8))))


def _corrupt(data: bytes) -> bytes:
    body = bytearray(data)
    body[10] = 0b111                                   # the first deflate block's type: 11, reserved (zlib.error)
    return bytes(body)


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "is not a valid gzip file"),
    ("truncated", "is not a valid gzip file (it ends early)"),
    ("no images", "holds no images"),
    ("0x0 images", "holds no images"),
])
def test_a_damaged_mnist_file_is_a_named_error(tmp_path, damage, message):
    from mptc.runtime.images import mnist
    if damage == "no images":
        _mnist(tmp_path, n=0)
    elif damage == "0x0 images":
        _mnist(tmp_path, images=_idx(np.zeros((4, 0, 0), np.uint8)))
    else:
        _mnist(tmp_path)
        path = tmp_path / "train-images-idx3-ubyte.gz"
        data = path.read_bytes()
        path.write_bytes(_corrupt(data) if damage == "corrupt" else data[:len(data) // 2])
        if damage == "corrupt":
            with pytest.raises(zlib.error):
                gzip.decompress(path.read_bytes())
    with pytest.raises(ValueError) as info:
        mnist(tmp_path)
    assert message in str(info.value) and "train-images-idx3-ubyte" in str(info.value)
    assert "\n" not in str(info.value)


MNIST_SPEC = """\
data pt = images.digits(size: 8, flatten: true)
data ft = images.mnist(root: "{root}", size: 8, flatten: true)
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta w: vector[10] = 0.0
pretrain {{ data pt batch 16  loss mean(w * bce(pt_head(encoder(x)), y)) }}
finetune {{ data ft.train  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 update ft_head }}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.test
train meta_steps 1 device cpu
"""


def test_a_corrupt_mnist_file_stops_mptc_run_with_one_line(tmp_path, capsys):
    _mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_corrupt(path.read_bytes()))
    spec = tmp_path / "m.mpt"
    spec.write_text(MNIST_SPEC.format(root=tmp_path))
    assert _run(spec, tmp_path / "run") == 2
    _one_error(capsys, "data 'ft'", str(path), "is not a valid gzip file")


def test_a_ptbxl_row_without_a_file_name_is_named(tmp_path):
    import importlib.util
    from mptc.runtime.ecg import ptbxl
    found = importlib.util.spec_from_file_location("ecg_fixture", os.path.join(os.path.dirname(__file__), "test_ecg.py"))
    test_ecg = importlib.util.module_from_spec(found)
    found.loader.exec_module(test_ecg)                 # its miniature PTB-XL folder
    RECORDS, write_ptbxl = test_ecg.RECORDS, test_ecg.write_ptbxl
    r = write_ptbxl(tmp_path, {k: RECORDS[k] for k in (1, 5, 6)})
    db = pd.read_csv(r / "ptbxl_database.csv", index_col=0)
    db.loc[5, "filename_lr"] = ""
    db.to_csv(r / "ptbxl_database.csv")
    with pytest.raises(ValueError) as info:
        ptbxl(r)
    assert "ptbxl_database.csv: record 5" in str(info.value) and "filename_lr" in str(info.value)

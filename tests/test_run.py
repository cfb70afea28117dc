"""`mptc run` end to end on a tiny spec: the run directory contract, reproducibility, and faults."""
import json

import pytest
import torch

from mptc.cli import main
from mptc.runtime import executor

from tests.conftest import tiny_spec  # noqa: E402

TINY = tiny_spec(meta_steps=6, log_every=2, against="no_pretrain, pretrain")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.mpt"
    path.write_text(TINY)
    return path


def _run(spec, out, *extra):
    return main(["run", str(spec), "--out", str(out), "--quiet", *extra])


def test_run_writes_the_whole_directory(spec, tmp_path):
    out = tmp_path / "run"
    assert _run(spec, out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["spec.mpt", "ir.json", "metrics.jsonl", "meta.json", "eval.json", "diagnostics.json", "checkpoint.pt",
         "summary.txt"])
    assert (out / "spec.mpt").read_text() == TINY
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["meta_step"] for r in rows] == [1, 2, 4, 6]
    assert {"step", "pt_loss", "ft_val_loss", "hypergrad_norm", "elapsed_s"} <= set(rows[0])
    meta = json.loads((out / "meta.json").read_text())
    weights, w = meta["task_weight"]["values"], meta["w"]["values"]
    assert len(weights) == 12 and w != [0.0] * 12
    assert meta["task_weight"]["names"] == meta["w"]["names"] == [f"task {i}" for i in range(12)]
    assert all(abs(t - 2 / (1 + 2.718281828459045 ** -v)) < 1e-5 for t, v in zip(weights, w))
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev) == {"meta", "no_pretrain", "pretrain"}
    assert all(set(v) >= {"metric", "mean", "stderr", "seeds"} and v["seeds"] == 2 for v in ev.values())
    ckpt = torch.load(out / "checkpoint.pt")
    assert "encoder.0.weight" in ckpt["params"] and "w" in ckpt["metas"]


def test_run_is_reproducible_and_set_changes_it(spec, tmp_path):
    for name, extra in (("a", ()), ("b", ()), ("c", ("--set", "train.seed=1"))):
        assert _run(spec, tmp_path / name, *extra) == 0
    meta = {n: json.loads((tmp_path / n / "meta.json").read_text())["w"] for n in "abc"}
    assert meta["a"] == meta["b"] != meta["c"]


def test_existing_out_is_refused(spec, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert _run(spec, tmp_path / "run") == 2
    assert "already exists" in capsys.readouterr().err


def test_nonfinite_hypergradients_stop_the_run_and_leave_nothing(spec, tmp_path, capsys, monkeypatch):
    real = executor.Trainer.hypergradient

    def poisoned(self, *args):
        l_val, hg, info = real(self, *args)
        return l_val, {n: g * float("nan") for n, g in hg.items()}, info
    monkeypatch.setattr(executor.Trainer, "hypergradient", poisoned)
    assert _run(spec, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "non-finite hypergradient at meta-step 5" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [spec]


def test_sigterm_stops_a_run_and_leaves_no_partial_directory(spec, tmp_path):
    """A scheduler's kill (SIGTERM) during meta-training: exit 143, one line, no run or staging folder."""
    import signal
    import subprocess
    import sys
    import time
    slow = tmp_path / "slow.mpt"
    slow.write_text(spec.read_text().replace("meta_steps 6", "meta_steps 100000"))
    assert "meta_steps 100000" in slow.read_text()
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mptc", "run", str(slow), "--out", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (list(tmp_path.glob(".run.partial-*/metrics.jsonl")) and time.time() < deadline):
        time.sleep(0.1)
    assert list(tmp_path.glob(".run.partial-*")), "the run never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "mptc: terminated", err
    assert not out.exists() and not list(tmp_path.glob(".run.partial-*"))

"""Checkpoints and resume (issue 17, section 1): a run killed by SIGKILL or stopped by SIGTERM mid-way and
resumed ends with the same meta.json, eval.json (wall times aside) and checkpoint.pt as an uninterrupted
one; the interrupted folder is never mistaken for a finished run; a changed spec is a named error."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_spec

MPTC = [sys.executable, "-m", "mptc"]


def _spec(tmp_path) -> Path:
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec(meta_steps=30, log_every=1).replace("log_every 1", "log_every 1 checkpoint_every 4"))
    return spec


def _strip(evals: dict) -> dict:
    return {m: {k: v for k, v in e.items() if not k.endswith("_s")} if isinstance(e, dict) else e
            for m, e in evals.items()}


def _same(a: Path, b: Path) -> None:
    assert (a / "meta.json").read_bytes() == (b / "meta.json").read_bytes()
    assert (a / "checkpoint.pt").read_bytes() == (b / "checkpoint.pt").read_bytes()
    assert _strip(json.loads((a / "eval.json").read_text())) == _strip(json.loads((b / "eval.json").read_text()))
    rows = lambda d: [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")}  # noqa: E731
                      for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(a) == rows(b)


def _second_checkpoint(staging: Path) -> bool:
    return (staging / "resume.pt").exists() and (staging / "metrics.jsonl").read_text().count("\n") >= 9


def _interrupt(tmp_path, spec, how, when=_second_checkpoint, sets=()) -> Path:
    """Starts a run, waits until `when(staging folder)` (its second checkpoint), and stops it with `how`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*MPTC, "run", str(spec), "--out", str(tmp_path / "cut"), "--quiet", *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = tmp_path / f".cut.partial-{proc.pid}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if when(staging):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(how)
    proc.wait(timeout=60)
    return staging


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_run_resumes_to_the_same_files(tmp_path, how):
    spec = _spec(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*MPTC, "run", str(spec), "--out", str(tmp_path / "full"), "--quiet"], env=env, check=True,
                   capture_output=True)
    staging = _interrupt(tmp_path, spec, how)
    cut = tmp_path / "cut"
    assert staging.is_dir() and (staging / "resume.pt").exists() and not (cut / "meta.json").exists()
    claim = json.loads((cut / "RUNNING").read_text())             # never mistaken for a finished run
    assert claim["staging"] == staging.name and claim.get("interrupted", False) == (how == signal.SIGTERM)
    target = cut if how == signal.SIGTERM else staging            # either names the run
    done = subprocess.run([*MPTC, "run", "--resume", str(target), "--quiet"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert not staging.exists() and not (cut / "RUNNING").exists() and not (cut / "resume.pt").exists()
    _same(tmp_path / "full", cut)


def test_a_run_killed_during_its_evaluation_resumes_from_its_staging_folder(tmp_path):
    """The staging folder holds meta.json from the end of meta-training on: it is not a finished run."""
    spec, sets = _spec(tmp_path), ["--set", "evaluate.epochs=400"]    # an evaluation of a few seconds
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*MPTC, "run", str(spec), "--out", str(tmp_path / "full"), "--quiet", *sets], env=env,
                   check=True, capture_output=True)
    staging = _interrupt(tmp_path, spec, signal.SIGKILL, when=lambda s: (s / "meta.json").exists(), sets=sets)
    assert (staging / "meta.json").exists() and not (staging / "eval.json").exists()
    done = subprocess.run([*MPTC, "run", "--resume", str(staging), "--quiet"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "nothing to resume" not in done.stderr, done.stderr
    _same(tmp_path / "full", tmp_path / "cut")


def test_resume_refuses_a_changed_spec_and_a_stranger_and_passes_over_a_finished_run(tmp_path, capsys):
    from mptc.cli import main
    spec = _spec(tmp_path)
    staging = _interrupt(tmp_path, spec, signal.SIGKILL)
    changed = tmp_path / "changed.mpt"
    changed.write_text(spec.read_text().replace("seed 0", "seed 1"))
    assert main(["run", str(changed), "--resume", str(staging), "--quiet"]) == 2
    assert "differs from the interrupted run's" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "not a run directory, not an interrupted one" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "cut"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0      # the unchanged one resumes
    capsys.readouterr()
    before = (tmp_path / "cut" / "meta.json").read_bytes()
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0       # finished: nothing to do
    out = capsys.readouterr()
    assert "the run has finished; nothing to resume" in out.err and "run directory:" in out.out
    assert (tmp_path / "cut" / "meta.json").read_bytes() == before
    assert main(["run", str(changed), "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    assert "the run has finished, so there is no spec to check against" in capsys.readouterr().err


def test_a_new_run_beside_keeps_an_interrupted_one(tmp_path, capsys):
    from mptc.runtime.rundir import clean_stale
    staging = _interrupt(tmp_path, _spec(tmp_path), signal.SIGKILL)
    assert clean_stale(tmp_path) == [] and staging.is_dir()
    assert "is an interrupted run; continue it with mptc run --resume" in capsys.readouterr().err


def test_a_graph_batch_kept_by_the_estimator_is_checkpointed_compactly(tmp_path):
    """A GIN run's estimator keeps recent PT batches (`mixed_batches`): views of the whole graph store. The
    checkpoint stores each as its own graphs, readable by torch's weights-only loader, collating the same."""
    import torch
    from mptc.runtime.checkpoint import _plain, _restored
    from mptc.runtime.graphs import synthetic_graphs
    store = synthetic_graphs(graphs=40, pt_tasks=3, related=1, ft_tasks=1).splits["all"][0]
    batch = store[torch.tensor([7, 3, 31])]
    torch.save({"recent": [(batch, torch.ones(3))]}, tmp_path / "c.pt")
    with pytest.raises(Exception):                      # as such: refused by the weights-only loader
        torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save(_plain({"recent": [(batch, torch.ones(3))]}), tmp_path / "c.pt")
    back = _restored(torch.load(tmp_path / "c.pt", weights_only=True))["recent"][0][0]
    assert len(back.x) < len(store.x) and len(back) == 3
    a, b = batch.collate(), back.collate()
    for key in ("x", "edge_index", "edge_attr", "batch", "ptr", "center_node_idx"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_a_damaged_checkpoint_is_named_and_no_resume_is_suggested(tmp_path, capsys):
    """A resume.pt that cannot be read: one named error, exit 2; the folder is kept, and no hint to resume it
    (following that hint would fail the same way)."""
    from mptc.cli import main
    staging = _interrupt(tmp_path, _spec(tmp_path), signal.SIGKILL)
    (staging / "resume.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "continue it with" not in err, err
    assert not (tmp_path / "cut" / "meta.json").exists() and (tmp_path / "cut" / "RUNNING").exists()

"""Several processes (issue 17, section 2): `mptc run --nproc 2` (gloo, 2 processes, each its half of every
batch) ends meta-training, in float64, with the meta-parameters one process reaches with the same global
batches, for each kind of estimator (every gradient, Hessian-vector product, mixed term and unrolled step
all-reduced: runtime/parallel.py); torchrun runs the same job; rank 0 alone writes the run directory; a
killed job resumes with --nproc to the same files; what cannot run on several processes is a named error."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_spec

MPTC = [sys.executable, "-m", "mptc"]
# One thread in every process, one run or two: the synthetic data are drawn in float32, where a machine's
# BLAS may round differently with another thread count, and a 1e-7 change of the data moved the learned
# weights by up to 4.5e-4 on a CI machine (the 1e-6 bound is about the all-reduces, not the data).
ENV = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
       "OMP_NUM_THREADS": "1"}
F64 = ["--set", "train.dtype=float64", "--quiet"]

ESTIMATORS = {
    "ift-neumann-auto": "ift(neumann(terms: 5, scale: auto))",
    "pt-unroll-K3": "unroll",                                 # differentiable all-reduces, P steps and K steps
    "fused-cg-auto-mixed2": 'ift(cg(iters: 6), fused: true, hvp: auto, mixed_batches: 2)',
    "amortized-fd": 'ift(amortized(iters: 2, method: cg), fused: true, mixed_mode: "finite-difference")',
}


def _spec(tmp_path, meta_steps=5, extra="") -> Path:
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec(meta_steps=meta_steps, log_every=1).replace("log_every 1", "log_every 1" + extra))
    return spec


def _run(args, **kw):
    return subprocess.run([*MPTC, "run", *map(str, args)], env=ENV, capture_output=True, text=True, **kw)


def _metas(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["metas"]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=list(ESTIMATORS))
def test_two_processes_reach_the_meta_parameters_of_one(tmp_path, estimator):
    spec = _spec(tmp_path)
    sets = [*F64, "--set", f"hypergradient.pretrain={ESTIMATORS[estimator]}",
            "--set", f"finetune.unroll={3 if estimator == 'pt-unroll-K3' else 1}"]
    one = _run([spec, "--out", tmp_path / "one", *sets])
    assert one.returncode == 0, one.stderr
    two = _run([spec, "--nproc", "2", "--out", tmp_path / "two", *sets])
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run directory:") == 1                  # rank 0 alone reports
    a, b = _metas(tmp_path / "one"), _metas(tmp_path / "two")
    assert a["w"].dtype == torch.float64 and float(a["w"].abs().max()) > 1e-3    # meta-training moved them
    assert float((a["w"] - b["w"]).abs().max()) < 1e-6
    rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for r1, r2 in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert r1["pt_loss"] == pytest.approx(r2["pt_loss"], rel=1e-9)      # the global batch's mean loss
        assert r1["hypergrad_norm"] == pytest.approx(r2["hypergrad_norm"], rel=1e-6)
    evals = [json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two")]
    for method in ("meta", "no_pretrain"):                         # seeds split over the processes, gathered
        assert evals[1][method]["values"] == pytest.approx(evals[0][method]["values"], abs=1e-6)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []                                          # one run directory, no staging left


def test_torchrun_runs_the_same_job(tmp_path):
    spec = _spec(tmp_path, meta_steps=3)
    ours = _run([spec, "--nproc", "2", "--out", tmp_path / "ours", *F64])
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "mptc", "run", str(spec), "--out", str(tmp_path / "theirs"), *F64],
                            env=ENV, capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert (tmp_path / "ours" / "meta.json").read_bytes() == (tmp_path / "theirs" / "meta.json").read_bytes()


@pytest.mark.parametrize("sets", [[], ["--set", "hypergradient.pretrain=ift(neumann(terms: 2), mixed_batches: 3)"]],
                         ids=["plain", "kept-batches"])                # each process keeps its own shards
def test_a_killed_job_resumes_with_nproc_to_the_same_files(tmp_path, sets):
    spec = _spec(tmp_path, meta_steps=24, extra=" checkpoint_every 4")
    full = _run([spec, "--nproc", "2", "--out", tmp_path / "full", "--quiet", *sets])
    assert full.returncode == 0, full.stderr
    launcher = subprocess.Popen([*MPTC, "run", str(spec), "--nproc", "2", "--out", str(tmp_path / "cut"), "--quiet",
                                 *sets],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, staging = time.time() + 120, None
    while time.time() < deadline and launcher.poll() is None:
        staging = next(tmp_path.glob(".cut.partial-*"), None)
        if staging and (staging / "resume.pt").exists() and (staging / "metrics.jsonl").read_text().count("\n") >= 9:
            break
        time.sleep(0.05)
    assert launcher.poll() is None, "the job finished before it could be killed"
    launcher.send_signal(signal.SIGKILL)                            # its processes are stopped with it
    launcher.wait(timeout=60)
    rank0 = int(staging.name.rpartition("-")[2])                    # the staging folder is rank 0's
    deadline = time.time() + 60
    while time.time() < deadline and _alive(rank0):
        time.sleep(0.05)
    assert json.loads((tmp_path / "cut" / "RUNNING").read_text()).get("interrupted")
    assert not (tmp_path / "cut" / "meta.json").exists() and staging.is_dir()
    once = _run(["--resume", tmp_path / "cut"])                     # written by 2 processes: a named error
    assert once.returncode == 2 and "--nproc 2" in once.stderr and "Traceback" not in once.stderr
    done = _run(["--resume", tmp_path / "cut", "--nproc", "2", "--quiet"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "full" / "meta.json").read_bytes() == (tmp_path / "cut" / "meta.json").read_bytes()
    assert (tmp_path / "full" / "checkpoint.pt").read_bytes() == (tmp_path / "cut" / "checkpoint.pt").read_bytes()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("case,sets,message", [
    ("odd batch", ["--set", "pretrain.data.batch=31"], "does not split into 2 equal shards"),
    ("search", ["--set", "hypergradient.pretrain=search(trials: 2)"], "run it on one process"),
    ("hessian batch", ["--set", "hypergradient.pretrain=ift(cg(iters: 2), hessian_batch: 5)"],
     "hessian_batch 5 does not split"),
])
def test_what_one_process_alone_runs_is_a_named_error(tmp_path, case, sets, message):
    done = _run([_spec(tmp_path), "--nproc", "2", "--out", tmp_path / "x", *sets])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(message) == 1 and "Traceback" not in done.stderr, done.stderr    # said once
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_bad_nproc_arguments_are_named_errors(tmp_path):
    spec = _spec(tmp_path)
    zero = _run([spec, "--nproc", "0"])
    assert zero.returncode == 2 and "number of processes >= 1" in zero.stderr
    (tmp_path / "taken").mkdir()
    taken = _run([spec, "--nproc", "2", "--out", tmp_path / "taken"])
    assert taken.returncode == 2 and "already exists" in taken.stderr
    nested = subprocess.run([*MPTC, "run", str(spec), "--nproc", "2"], capture_output=True, text=True,
                            env={**ENV, "WORLD_SIZE": "2"})
    assert nested.returncode == 2 and "under torchrun, leave it out" in nested.stderr
    bad = _run([tmp_path / "missing.mpt", "--nproc", "2"])          # checked once, before any process starts
    assert bad.returncode == 2 and bad.stderr.count("missing.mpt") == 1


def test_without_nproc():
    from mptc.launch import without_nproc
    assert without_nproc(["run", "s.mpt", "--nproc=4", "--out", "o"]) == ["run", "s.mpt", "--out", "o"]

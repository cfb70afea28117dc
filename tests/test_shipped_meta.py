"""Every shipped spec, on shortened settings, gives the meta.json stored in tests/fixtures/meta/: the
learned meta-parameters do not change when the code is restructured. The stored copies were written by
the code before the round-2 restructuring (commit 26c431c), except where a fixed defect changes a spec's
numbers on purpose (listed in tests/fixtures/meta/README.md).

The two ppi specs run in float64 (`train.dtype=float64`, which 26c431c did not have; their copies were
written by the code of 2026-12-06, which gave the same float32 meta.json as 26c431c on the machine that
wrote them, max |difference| 0.0). Their meta-optimizer (SGD, rate 3e6, on hypergradients of ~1e-6)
amplifies a perturbation about 5e5-fold in 3 meta-steps: in float32 the rounding of another CPU's kernels
moved stored weights by up to 6 (CI, 2026-12-05), while in float64 a 1e-14 change of the initial weights
moves them by 5e-9 and the AVX2 and AVX-512 kernels (ATEN_CPU_CAPABILITY) agree to 8e-11.

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_shipped_meta.py   # rewrites the stored copies
"""
import json
import os
from pathlib import Path

import attrs
import pytest

from mptc.compiler.lower import compile_spec

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "tests" / "fixtures" / "meta"
SHORT = ["train.meta_steps=3", "train.warmup=2", "train.device=cpu"]
SPECS = {  # spec -> its own shortening (besides SHORT)
    "specs/quickstart.mpt": [],
    "specs/estimators.mpt": [],
    "specs/paper/ecg_simclr.mpt": ["data.pt.examples=64", "data.ft.examples=64"],
    "specs/paper/noisy_labels.mpt": [],
    "specs/paper/ppi_full_access.mpt": ["data.pt.graphs=64", "data.ft.graphs=64", "train.dtype=float64"],
    "specs/paper/ppi_partial_access.mpt": ["data.pt.graphs=64", "data.ft_all.graphs=64", "train.dtype=float64"],
    "specs/paper/ppi_task_weighting.mpt": ["data.pt.examples=512", "data.ft.examples=256"],
    "specs/paper/rotation.mpt": ["pretrain.steps=3", "train.reset_every=2"],
}


def meta_json(spec: str, tmp_path) -> dict:
    """The meta.json of a run of `spec`, shortened, without its evaluation."""
    import torch
    from mptc.runtime.executor import run_plan
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stored copies were made: reductions in one order
    try:
        return _run(spec, tmp_path, run_plan)
    finally:
        torch.set_num_threads(threads)


def _run(spec, tmp_path, run_plan):
    text = (ROOT / spec).read_text(encoding="utf-8")
    plan = attrs.evolve(compile_spec(text, spec, SHORT + SPECS[spec]), evaluate=None)
    out = run_plan(plan, text, tmp_path / "run", progress=False)
    return json.loads((Path(out) / "meta.json").read_text())


def values(tree):
    """The numbers of a meta.json in order (names and nesting aside)."""
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in values(tree[k])]
    if isinstance(tree, list):
        return [v for x in tree for v in values(x)]
    return [tree] if isinstance(tree, (int, float)) else []


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_shipped_spec_gives_the_stored_meta_json(spec, tmp_path):
    got = meta_json(spec, tmp_path)
    stored = STORED / (Path(spec).stem + ".json")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        stored.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(stored.read_text())
    assert sorted(got) == sorted(want)
    assert values(got) == pytest.approx(values(want), rel=1e-5, abs=1e-6)

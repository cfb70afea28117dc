"""The amortized solver (issue 17, section 5): warm-started solves, in float64 against exact values, and
`check every`'s cosine of its p to a converged solve."""
import json

import torch

from mptc.cli import main
from mptc.runtime.solvers import Amortized, cg, richardson
from tests.conftest import tiny_spec


def _system(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = m @ m.T / n + torch.eye(n, dtype=torch.float64)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    return A, v


def test_cg_from_a_warm_start_solves_the_same_system():
    A, v = _system()
    exact = torch.linalg.solve(A, v)
    p, _ = cg(lambda u: [A @ u[0]], [v], iters=50, tol=1e-14, x0=[exact + 0.1])
    assert torch.allclose(p[0], exact, atol=1e-12)
    p, info = cg(lambda u: [A @ u[0]], [v], iters=5, x0=[exact.clone()])   # already solved: no step taken
    assert torch.allclose(p[0], exact, atol=1e-14) and info["iters"] <= 1


def test_amortized_solves_converge_across_meta_steps_to_the_exact_solution():
    """Repeated one-product solves of a slowly moving system track H^-1 v (Arbel & Mairal's amortization)."""
    A, v = _system()
    for method, kwargs in (("cg", {}), ("richardson", {"scale": 0.2})):
        est, solver = {}, Amortized(iters=1, method=method, **kwargs)
        for step in range(1, 400):
            solve, args, _ = solver.bind(0.1, est, step)
            p, _ = solve(lambda u: [A @ u[0]], [v], **args)
        assert torch.allclose(p[0], torch.linalg.solve(A, v), atol=1e-8), method
        assert torch.equal(est["amortized_p"][0], p[0])


def test_richardson_from_zero_is_the_neumann_series():
    from mptc.runtime.solvers import neumann
    A, v = _system()
    p, _ = richardson(lambda u: [A @ u[0]], [v], iters=4, scale=0.1)
    q, _ = neumann(lambda u: [A @ u[0]], [v], terms=3, scale=0.1)
    assert torch.allclose(p[0], q[0], atol=1e-14)


def test_check_every_reports_the_cosine_of_the_amortized_p(tmp_path):
    spec = tmp_path / "a.mpt"
    spec.write_text(tiny_spec(meta_steps=6, log_every=1) +
                    "hypergradient pretrain: ift(amortized(iters: 2)), finetune: unroll check every 2\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    checked = [r for r in rows if r["meta_step"] % 2 == 0]
    assert all(-1 <= r["check_p_cosine"] <= 1 and "check_cosine" in r for r in checked)
    assert all("check_p_cosine" not in r for r in rows if r["meta_step"] % 2)

"""Every hypergradient estimator against exact values in float64, and their options end to end.

1. Ridge regression with per-coordinate penalties exp(phi_k): the best response theta*(phi) and its
   hypergradient have closed forms. ift(cg) matches them; ift(cg) with `hessian_batch` matches the
   closed form of its own (sub-batch Hessian) approximation.
2. Hessian-vector products: the three modes agree to 1e-8 on a small MLP loss; power iteration finds
   lambda_max.
3. PT `unroll` (reverse mode through P optimizer steps) against central finite differences of the
   unrolled map, SGD and Adam.
4. FT `unroll(K)` for K = 1, 3, head only and whole network, against central finite differences.
5. The options through `mptc run`: neumann scale auto, check every, hvp modes, PT unroll, search,
   max_nonfinite, reset_every (and the loop's schedule).
"""
import json

import pytest
import torch

from mptc.cli import main
from mptc.runtime import executor, hypergradient, loop
from mptc.runtime.estimators import ift, unroll_ft, unroll_pt
from mptc.runtime.hvp import MAKERS, MODES, power_iteration
from mptc.runtime.optim import adam, sgd
from mptc.runtime.solvers import cg, neumann

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---- 1. ridge regression ---------------------------------------------------------------------------
@pytest.fixture
def ridge():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 5
    X, y = torch.randn(n, d, generator=g), torch.randn(n, 1, generator=g)
    phi = (0.3 * torch.randn(d, generator=g)).requires_grad_()
    target = torch.randn(d, generator=g)

    def loss_pt(params, metas, x, yy):                   # 1/n |X t - y|^2 + sum_k exp(phi_k) t_k^2
        t = params["t"]
        return ((x @ t - yy[:, 0]) ** 2).mean() + (metas["phi"].exp() * t * t).sum()

    def hessian(x):
        return 2 * x.T @ x / len(x) + 2 * torch.diag(phi.detach().exp())

    theta = torch.linalg.solve(hessian(X), 2 * X.T @ y[:, 0] / n).requires_grad_()   # theta*(phi)
    v = theta.detach() - target                           # dL_val/dt for L_val = 1/2 |t - target|^2
    mixed = torch.diag(2 * phi.detach().exp() * theta.detach())                    # d2L/dt dphi
    exact = -torch.linalg.solve(hessian(X), v) @ mixed
    return dict(X=X, y=y, phi=phi, theta=theta, loss=loss_pt, v=v, hessian=hessian, mixed=mixed,
                exact=exact, target=target)


def test_ridge_ift_cg_matches_the_closed_form_and_finite_differences(ridge):
    hg, info = ift(ridge["loss"], {"t": ridge["theta"]}, {"phi": ridge["phi"]}, (ridge["X"], ridge["y"]),
                   [ridge["v"]], ["t"], cg, {"iters": 50, "tol": 1e-14})
    assert _rel(hg["phi"], ridge["exact"]) < 1e-6 and info["residual"] < 1e-10
    X, y, eps = ridge["X"], ridge["y"], 1e-6

    def val(phi):                                         # phi -> theta*(phi) -> L_val, solved exactly
        H = 2 * X.T @ X / len(X) + 2 * torch.diag(phi.exp())
        t = torch.linalg.solve(H, 2 * X.T @ y[:, 0] / len(X))
        return 0.5 * float(((t - ridge["target"]) ** 2).sum())
    phi = ridge["phi"].detach()
    fd = torch.tensor([(val(phi + eps * e) - val(phi - eps * e)) / (2 * eps) for e in torch.eye(len(phi))])
    assert _rel(hg["phi"], fd) < 1e-6


def test_hessian_batch_uses_the_sub_batch_hessian_and_the_full_mixed_term(ridge):
    m = 12
    hg, _ = ift(ridge["loss"], {"t": ridge["theta"]}, {"phi": ridge["phi"]}, (ridge["X"], ridge["y"]),
                [ridge["v"]], ["t"], cg, {"iters": 50, "tol": 1e-14}, hessian_batch=m)
    approx = -torch.linalg.solve(ridge["hessian"](ridge["X"][:m]), ridge["v"]) @ ridge["mixed"]
    assert _rel(hg["phi"], approx) < 1e-6 and _rel(hg["phi"], ridge["exact"]) > 1e-3


@pytest.mark.parametrize("mixed_mode", ["reverse-over-reverse", "finite-difference"])
def test_mixed_batches_average_the_mixed_term_and_keep_the_hessian_of_the_main_batch(mixed_mode):
    """Task-weighted least squares, L = 1/n sum_i sum_k e^{w_k} (x_i t_k - Y_ik)^2 + lam |t|^2, at an
    arbitrary t: d2L/dt_k dw_j = delta_jk e^{w_k} 2/n X^T (X t_k - Y_k) on the whole data, and with the
    mixed term averaged over two equal halves and H from the first half alone, the hypergradient is
    -(H_1^-1 v)^T times the whole data's mixed term, in closed form. dL/dw is quadratic in t, so the
    central difference along p (`finite-difference`) is exact up to rounding."""
    g = torch.Generator().manual_seed(1)
    n, d, k, lam = 24, 4, 3, 0.1
    X, Y = torch.randn(n, d, generator=g), torch.randn(n, k, generator=g)
    t, w = torch.randn(d, k, generator=g).requires_grad_(), (0.5 * torch.randn(k, generator=g)).requires_grad_()
    v = torch.randn(d, k, generator=g)

    def loss(params, metas, x, y):
        return (metas["w"].exp() * (x @ params["t"] - y) ** 2).sum(1).mean() + lam * (params["t"] ** 2).sum()
    halves = [(X[:12], Y[:12]), (X[12:], Y[12:])]
    hg, _ = ift(loss, {"t": t}, {"w": w}, halves[0], [v], ["t"], cg, {"iters": 50, "tol": 1e-14}, more=halves[1:],
                mixed_mode=mixed_mode)
    X1, e = X[:12], w.detach().exp()
    p = torch.stack([torch.linalg.solve(e[j] * 2 / 12 * X1.T @ X1 + 2 * lam * torch.eye(d), v[:, j])
                     for j in range(k)], 1)                                       # H_1 is block-diagonal per task
    mixed = e * (2 / n) * (X.T @ (X @ t.detach() - Y))                           # column j: d grad_{t_j} / dw_j
    assert _rel(hg["w"], -(p * mixed).sum(0)) < 1e-10
    alone, _ = ift(loss, {"t": t}, {"w": w}, halves[0], [v], ["t"], cg, {"iters": 50, "tol": 1e-14})
    assert _rel(alone["w"], hg["w"]) > 1e-2                                       # the second half counts


@pytest.mark.parametrize("mode", MODES)
def test_every_hvp_mode_gives_the_ridge_hypergradient(ridge, mode):
    hg, _ = ift(ridge["loss"], {"t": ridge["theta"]}, {"phi": ridge["phi"]}, (ridge["X"], ridge["y"]),
                [ridge["v"]], ["t"], cg, {"iters": 50, "tol": 1e-14}, hvp=mode)
    assert _rel(hg["phi"], ridge["exact"]) < 1e-6


def test_neumann_with_alpha_from_power_iteration_converges_monotonically(ridge):
    lam = torch.linalg.eigvalsh(ridge["hessian"](ridge["X"])).max()

    def prepare(hvp, like):
        est = power_iteration(hvp, like, iters=200)
        return {"scale": 1 / est}, {"lambda_max": est}
    errors = []
    for terms in (0, 2, 8, 32, 128):
        hg, info = ift(ridge["loss"], {"t": ridge["theta"]}, {"phi": ridge["phi"]}, (ridge["X"], ridge["y"]),
                       [ridge["v"]], ["t"], neumann, {"terms": terms}, prepare=prepare)
        errors.append(_rel(hg["phi"], ridge["exact"]))
        assert abs(info["lambda_max"] - float(lam)) / float(lam) < 1e-6
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6


# ---- 2. Hessian-vector products --------------------------------------------------------------------
def _mlp_loss(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    theta = [torch.randn(4, 6, generator=g) / 2, torch.randn(6, generator=g), torch.randn(6, 2, generator=g) / 2]

    def loss_of(t):
        return ((torch.tanh(x @ t[0] + t[1]) @ t[2] - y) ** 2).mean()
    return loss_of, theta, [torch.randn(t.shape, generator=g) for t in theta]


def test_hvp_modes_agree_to_1e_8():
    loss_of, theta, u = _mlp_loss()
    products = {m: torch.cat([h.flatten() for h in MAKERS[m](loss_of, theta)(u)]) for m in MODES}
    exact = products["reverse-over-reverse"]
    for mode, hu in products.items():
        assert _rel(hu, exact) < 1e-8, mode


def test_power_iteration_finds_lambda_max():
    loss_of, theta, _ = _mlp_loss(1)
    flat = torch.cat([t.flatten() for t in theta])
    sizes = [t.numel() for t in theta]

    def f(v):
        return loss_of([p.reshape(t.shape) for p, t in zip(torch.split(v, sizes), theta)])
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat))
    top = float(eig.abs().max())
    est = power_iteration(MAKERS["reverse-over-reverse"](loss_of, theta), theta, iters=300)
    assert abs(est - top) / top < 1e-4


# ---- 3. PT unroll against finite differences ---------------------------------------------------------
def _pt_problem():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(24, 3, generator=g), (torch.randn(24, 4, generator=g) > 0).double()
    params = {"enc": torch.randn(3, 5, generator=g) / 2, "head": torch.randn(5, 4, generator=g) / 2}
    phi = (0.5 * torch.randn(4, generator=g)).requires_grad_()
    batches = [(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]) for i in range(3)]

    def loss_pt(p, metas, xb, yb):
        logits = torch.tanh(xb @ p["enc"]) @ p["head"]
        per_task = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="none").mean(0)
        return (2 * torch.sigmoid(metas["phi"]) * per_task).mean()
    v = [torch.randn(3, 5, generator=g), torch.randn(5, 4, generator=g)]
    return params, phi, batches, loss_pt, v


@pytest.mark.parametrize("make_opt", [lambda: sgd(lr=0.3, momentum=0.5), lambda: adam(lr=0.05)], ids=["sgd", "adam"])
def test_pt_unroll_matches_central_finite_differences(make_opt):
    params, phi, batches, loss_pt, v = _pt_problem()
    keys, opt = ["enc", "head"], make_opt()
    warm = opt.init([params[k] for k in keys])
    for xb, yb in batches:                                # a non-trivial optimizer state to start from
        grads = torch.autograd.grad(loss_pt({k: t.requires_grad_() for k, t in params.items()}, {"phi": phi.detach()},
                                            xb, yb), [params[k] for k in keys])
        new, warm = opt.update([params[k].detach() for k in keys], list(grads), warm)
        params = {k: t.detach() for k, t in zip(keys, new)}
    hg, info = unroll_pt(loss_pt, params, {"phi": phi}, keys, opt, warm, batches, v)

    def unrolled(ph):                                     # phi -> v . theta_P(phi)
        theta, state = [params[k].clone().requires_grad_() for k in keys], warm
        for xb, yb in batches:
            g = torch.autograd.grad(loss_pt(dict(zip(keys, theta)), {"phi": ph}, xb, yb), theta)
            theta, state = opt.update([t.detach() for t in theta], list(g), state)
            theta = [t.requires_grad_() for t in theta]
        return float(sum((a.detach() * b).sum() for a, b in zip(theta, v)))
    eps, base = 1e-6, phi.detach()
    fd = torch.tensor([(unrolled(base + eps * e) - unrolled(base - eps * e)) / (2 * eps) for e in torch.eye(4)])
    assert info["iters"] == 3 and _rel(hg["phi"], fd) < 1e-6


# ---- 4. FT unroll(K), head only and whole network ------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("update", [["head"], ["enc", "head"]], ids=["head-only", "full"])
@pytest.mark.parametrize("make_opt", [lambda: sgd(lr=0.5), lambda: adam(lr=0.05)], ids=["sgd", "adam"])
def test_ft_unroll_matches_central_finite_differences(k, update, make_opt):
    g = torch.Generator().manual_seed(3)
    enc, head = torch.randn(3, 4, generator=g) / 2, torch.randn(4, 2, generator=g) / 2
    batches = [(torch.randn(8, 3, generator=g), (torch.randn(8, 2, generator=g) > 0).double()) for _ in range(k)]
    val = (torch.randn(10, 3, generator=g), (torch.randn(10, 2, generator=g) > 0).double())
    phi = torch.tensor(0.3).requires_grad_()              # a meta-parameter read by the FT loss (direct term)

    def loss(p, metas, x, y):
        logits = torch.tanh(x @ p["enc"]) @ p["head"]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) * (1 + metas["phi"])
    opt = make_opt()
    params = {"enc": enc.clone().requires_grad_(), "head": head.clone().requires_grad_()}
    l_val, v, direct = unroll_ft(loss, loss, params, {"phi": phi}, update, opt,
                                 opt.init([params[n] for n in update]), k, batches, val, wrt=["enc"])

    def val_loss(e):                                      # encoder -> K FT steps -> L_val (exact, no graph kept)
        p = {"enc": e.clone(), "head": head.clone()}
        psi, state = [p[n].requires_grad_() for n in update], opt.init([p[n] for n in update])
        for x, y in batches:
            grads = torch.autograd.grad(loss({**p, **dict(zip(update, psi))}, {"phi": phi.detach()}, x, y), psi)
            psi, state = opt.update([t.detach() for t in psi], list(grads), state)
            psi = [t.requires_grad_() for t in psi]
        return float(loss({**p, **dict(zip(update, psi))}, {"phi": phi.detach()}, *val))
    eps = 1e-6
    fd = torch.tensor([(val_loss(enc + eps * e.reshape(3, 4)) - val_loss(enc - eps * e.reshape(3, 4))) / (2 * eps)
                       for e in torch.eye(12)])
    assert _rel(v[0].flatten(), fd) < 1e-6
    assert abs(float(l_val) - val_loss(enc)) < 1e-12 and direct["phi"].abs() > 0


# ---- 5. the options through `mptc run` ------------------------------------------------------------------
TINY = """
spec tiny "estimator options"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4])
head pt_head = linear(out: 12)
head ft_head = linear(out: 2)
meta w: vector[12] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y))  steps 3 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
HYPERGRADIENT
meta_optimizer adam(lr: 0.1)
train meta_steps 4 warmup 2 seed 0 device cpu log_every 1 TRAIN
evaluate finetune(epochs: 1, seeds: 1) against pretrain
"""


def _run(tmp_path, hypergradient, train="", name="run"):
    spec = tmp_path / f"{name}.mpt"
    spec.write_text(TINY.replace("HYPERGRADIENT", hypergradient).replace("TRAIN", train))
    torch.set_default_dtype(torch.float32)               # a run as users get it (the fixture restores float64)
    code = main(["run", str(spec), "--out", str(tmp_path / name), "--quiet"])
    rows = [json.loads(r) for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    return code, rows


def test_scale_auto_logs_lambda_max_and_check_logs_the_cosine(tmp_path):
    """lambda_max is estimated on meta-steps 1 and 3 (rescale_every 2) and kept in between; its value
    against the exact top eigenvalue, and the residual, are tests/test_hg_defects.py's (float64)."""
    code, rows = _run(tmp_path, "hypergradient pretrain: ift(neumann(terms: 3, scale: auto, rescale_every: 2)) "
                                "check every 2")
    assert code == 0
    lam = [r["lambda_max"] for r in rows]
    assert lam[0] == lam[1] != lam[2] == lam[3] and min(lam) > 0 and "alpha_lambda_max" not in rows[0]
    assert all(0 <= r["solver_residual"] for r in rows)
    assert {"pt_s", "ft_unroll_s", "solve_s", "mixed_s"} <= set(rows[0])
    assert [r["meta_step"] for r in rows if "check_cosine" in r] == [2, 4]
    assert all(-1 <= r["check_cosine"] <= 1 for r in rows if "check_cosine" in r)


def test_cg_to_tolerance_agrees_with_the_check_reference(tmp_path):
    code, rows = _run(tmp_path, "hypergradient pretrain: ift(cg(iters: 200, tol: 1e-8)) check every 1")
    assert code == 0 and all(r["check_cosine"] > 0.999 for r in rows)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "finite-difference", "auto"])
def test_hvp_modes_run_and_hessian_batch(tmp_path, mode):
    code, rows = _run(tmp_path, f"hypergradient pretrain: ift(neumann(terms: 2), hvp: \"{mode}\", hessian_batch: 8)")
    assert code == 0 and len(rows) == 4 and all(r["hypergrad_norm"] > 0 for r in rows)


def test_pt_unroll_runs_and_replays_the_window(tmp_path, monkeypatch):
    seen = []
    real = hypergradient.unroll_pt

    def spy(loss_pt, params0, metas, keys, opt, opt0, batches, v, **kw):
        seen.append(len(batches))
        return real(loss_pt, params0, metas, keys, opt, opt0, batches, v, **kw)
    monkeypatch.setattr(hypergradient, "unroll_pt", spy)
    code, rows = _run(tmp_path, "hypergradient pretrain: unroll, finetune: unroll")
    assert code == 0 and seen == [3, 3, 3, 3] and all(r["solver_iters"] == 3 for r in rows)


def test_search_runs_whole_trials_and_is_evaluated(tmp_path):
    code, rows = _run(tmp_path, "hypergradient pretrain: search(random, trials: 3)")
    assert code == 0 and [r["trial"] for r in rows] == [0, 1, 2]
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(ev) == {"search", "pretrain"}


def test_max_nonfinite_is_configurable(tmp_path, capsys, monkeypatch):
    real = executor.Trainer.hypergradient

    def poisoned(self, *args):
        l_val, hg, info = real(self, *args)
        return l_val, {n: g * float("nan") for n, g in hg.items()}, info
    monkeypatch.setattr(executor.Trainer, "hypergradient", poisoned)
    code, _ = _run(tmp_path, "", train="max_nonfinite 2")
    assert code == 2 and not (tmp_path / "run").exists()
    assert "non-finite hypergradient at meta-step 2 (2 in a row)" in capsys.readouterr().err


def test_a_run_shorter_than_max_nonfinite_whose_every_meta_step_is_skipped_stops(tmp_path, capsys, monkeypatch):
    """4 meta-steps, all non-finite, under max_nonfinite 5: the meta-parameters never moved, and the run
    said nothing and exited 0; now it stops with a named error and leaves no finished folder."""
    real = executor.Trainer.hypergradient

    def poisoned(self, *args):
        l_val, hg, info = real(self, *args)
        return l_val, {n: g * float("nan") for n, g in hg.items()}, info
    monkeypatch.setattr(executor.Trainer, "hypergradient", poisoned)
    code, _ = _run(tmp_path, "")
    assert code == 2 and not (tmp_path / "run").exists()
    assert "non-finite hypergradient at every meta-step (4 of 4): the meta-parameters never moved" in \
        capsys.readouterr().err


def test_a_skipped_meta_step_is_logged_and_the_run_goes_on(tmp_path, monkeypatch):
    real, calls = executor.Trainer.hypergradient, []

    def poisoned_once(self, *args):
        l_val, hg, info = real(self, *args)
        calls.append(1)
        return l_val, {n: g * (float("nan") if len(calls) == 2 else 1) for n, g in hg.items()}, info
    monkeypatch.setattr(executor.Trainer, "hypergradient", poisoned_once)
    spec = tmp_path / "skip.mpt"
    spec.write_text(TINY.replace("HYPERGRADIENT", "").replace("TRAIN", "").replace("log_every 1", "log_every 3"))
    torch.set_default_dtype(torch.float32)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["meta_step"], r["skipped"]) for r in rows] == [(1, False), (2, True), (3, False), (4, False)]


def test_reset_every_starts_a_new_cycle_and_keeps_the_meta_parameters(tmp_path, monkeypatch):
    """`train reset_every 2` of 4 meta-steps: one reset, after meta-step 2, to the parameters drawn for
    cycle 1, then `warmup` steps again; w and the meta-optimizer carry on; the `pretrain` baseline
    (same run) never resets."""
    real, seen = executor.Trainer.reset, []

    def spy(self, state):
        before = {n: t.detach().clone() for n, t in state.metas.items()}
        old, meta_opt = {k: t.detach().clone() for k, t in state.params.items()}, state.meta_opt
        real(self, state)
        cycle = state.cycle
        drawn = self.prog.draw_params(1_000_003 * (self.plan.train.seed + 1) + cycle)
        new = {k: t.detach().clone() for k, t in state.params.items()}    # the PT steps change them in place
        seen.append((cycle, before, state.metas, old, new, drawn, state.meta_opt is meta_opt))
    monkeypatch.setattr(executor.Trainer, "reset", spy)
    code, rows = _run(tmp_path, "", train="reset_every 2")
    assert code == 0 and [c for c, *_ in seen] == [1]
    _, before, after, old, new, drawn, same_meta_opt = seen[0]
    assert all(torch.equal(before[n], after[n]) for n in before) and before["w"].abs().sum() > 0
    assert all(torch.equal(new[k], drawn[k]) for k in new) and any(not torch.equal(new[k], old[k]) for k in new)
    assert same_meta_opt
    # P 3, warmup 2: meta-steps after PT steps 5, 8, then (warm-up 9-10) 13, 16
    assert [(r["meta_step"], r["step"]) for r in rows] == [(1, 5), (2, 8), (3, 13), (4, 16)]


def test_reset_every_as_long_as_the_run_changes_nothing(tmp_path):
    runs = [_run(tmp_path, "", train=t, name=n)[1] for t, n in (("", "a"), ("reset_every 4", "b"))]
    keys = ("step", "meta_step", "pt_loss", "ft_val_loss", "hypergrad_norm")
    assert [[r[k] for k in keys] for r in runs[0]] == [[r[k] for k in keys] for r in runs[1]]


@pytest.mark.parametrize("warmup,P,M,R", [(0, 1, 1, 0), (2, 3, 4, 2), (0, 2, 5, 2), (1, 1, 7, 3), (3, 2, 4, 9)])
def test_schedule_counts(warmup, P, M, R):
    steps = list(loop.schedule(warmup, P, M, R))
    cycles = -(-M // R) if R else 1
    assert len(steps) == cycles * warmup + M * P
    assert [m for _, _, m in steps if m] == list(range(1, M + 1))
    assert sum(o for _, o, _ in steps) == M and sum(r for r, _, _ in steps) == cycles - 1
    opened = [i for i, (_, o, _) in enumerate(steps) if o]
    assert all(steps[i + P - 1][2] for i in opened)      # every window ends in its meta-step


def _trainer(hypergradient: str):
    """A float32 Trainer over TINY with `hypergradient`, its initial state and fixed PT and FT batches."""
    from mptc.compiler.lower import compile_spec
    from mptc.runtime.program import Program
    torch.set_default_dtype(torch.float32)
    plan = compile_spec(TINY.replace("HYPERGRADIENT", hypergradient).replace("TRAIN", ""), "t.mpt")
    torch.manual_seed(0)
    trainer = executor.Trainer(plan, Program(plan, torch.device("cpu")), data=None)
    g = torch.Generator().manual_seed(0)
    pt = (torch.randn(32, 8, generator=g), (torch.randn(32, 12, generator=g) > 0).float())
    ft = (torch.randn(32, 8, generator=g), (torch.randn(32, 2, generator=g) > 0).float())
    return trainer, trainer.init_state(), pt, ft


def test_an_explicit_neumann_scale_reaches_the_solver():
    """terms 0: p = alpha v, so the hypergradient is alpha times the identity solver's."""
    hgs = {}
    for name, est in (("neumann", "ift(neumann(terms: 0, scale: 0.25))"), ("identity", "ift(identity)")):
        trainer, state, pt, ft = _trainer(f"hypergradient pretrain: {est}")
        hgs[name] = trainer.hypergradient(state, pt, [ft, ft], ft)[1]["w"]
    assert torch.allclose(hgs["neumann"], 0.25 * hgs["identity"], rtol=1e-5, atol=0)


def test_mixed_batches_use_the_last_n_pt_batches(tmp_path):
    """`mixed_batches: 3`: the trainer keeps the last 3 PT batches it drew, and the mixed term averages
    over them (the current batch and the two before it); `mixed_mode: finite-difference` agrees in
    float32; the options run end to end."""
    trainer, state, pt, _ = _trainer("hypergradient pretrain: ift(neumann(terms: 2, scale: 0.1), mixed_batches: 3)")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 8, generator=g), (torch.randn(32, 12, generator=g) > 0).float()) for _ in range(4)]
    for b in batches:
        trainer.pt.record(state, b)
    v = [torch.randn_like(state.params[k]) for k in trainer.pt_keys]
    hg, _ = trainer.pt.through_pt(trainer, state, batches[-1], v)
    expected, _ = ift(trainer.loss_pt, state.params, state.metas, batches[-1], v, trainer.pt_keys, neumann,
                      {"terms": 2, "scale": 0.1}, more=batches[1:3])
    assert torch.allclose(hg["w"], expected["w"], rtol=1e-5, atol=0)
    one, _ = ift(trainer.loss_pt, state.params, state.metas, batches[-1], v, trainer.pt_keys, neumann,
                 {"terms": 2, "scale": 0.1})
    assert not torch.allclose(hg["w"], one["w"], rtol=1e-2, atol=0)
    trainer.mixed_mode = "finite-difference"                 # float32 central differences: close, not equal
    fd, _ = trainer.pt.through_pt(trainer, state, batches[-1], v)
    assert float(torch.nn.functional.cosine_similarity(fd["w"], hg["w"], dim=0)) > 0.99
    code, rows = _run(tmp_path, "hypergradient pretrain: ift(neumann(terms: 2), mixed_batches: 3, "
                                "mixed_mode: \"finite-difference\") check every 2")
    assert code == 0 and len(rows) == 4 and all(r["hypergrad_norm"] > 0 for r in rows)


def test_fused_schedule_is_ift_at_the_last_pt_steps_point(tmp_path):
    """`fused: true` reuses the last PT step's gradient: the same as ift with H and the mixed term at
    theta_{P-1} (the point that step started from), on that step's batch."""
    hypergradient = "hypergradient pretrain: ift(neumann(terms: 3, scale: 0.1), fused: true)"
    trainer, state, pt, ft = _trainer(hypergradient)
    before = {k: t.detach().clone().requires_grad_() for k, t in state.params.items()}
    trainer.pt_step(state, pt, keep=True)
    assert not torch.equal(before["encoder.0.weight"], state.params["encoder.0.weight"])
    _, v, _ = trainer.ft.through_ft(trainer, state, [ft, ft], ft)
    fused, _ = trainer.pt.through_pt(trainer, state, pt, v)
    expected, _ = ift(trainer.loss_pt, before, state.metas, pt, v, trainer.pt_keys, neumann, {"terms": 3, "scale": 0.1})
    assert torch.allclose(fused["w"], expected["w"], rtol=1e-5, atol=1e-12)
    code, rows = _run(tmp_path, hypergradient)
    assert code == 0 and len(rows) == 4

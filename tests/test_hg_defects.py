"""Five hypergradient defects, each pinned in float64 against exact values (each of these tests failed
before its fix):

1. Coupled weight decay: the PT optimizer's fixed point solves grad L + lambda theta = 0, so IFT (every
   solver, and the `check` reference) uses H + lambda I. Task-weighted least squares, closed form.
2. `unroll K update encoder, ft_head`: the online FT step trains the FT head alone, and the PT `unroll`
   replay reaches the loop's theta_P bit for bit; its hypergradient matches central finite differences
   of the replayed objective.
3. PT `unroll` with an augmentation and P = 70 (more than the old 64-entry noise memo): the replay sees
   the noise the loop drew, and the hypergradient matches finite differences.
4. `check every` under PT `unroll` compares with the IFT reference (CG to tolerance), not with itself.
5. Neumann `scale: auto` logs `lambda_max` (the power-iteration estimate) against the exact top
   eigenvalue, and `solver_residual` against a direct computation.
"""
import pytest
import torch

from mptc.compiler.lower import compile_spec
from mptc.runtime import executor, hypergradient
from mptc.runtime.estimators import ift
from mptc.runtime.loop import Trainer, meta_train
from mptc.runtime.program import Program
from mptc.runtime.solvers import cg

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py

MULTITASK = """
data pt = synthetic.multitask(examples: 64, dim: 5, tasks: 3, related: 1, factors: 4, related_factors: 1)
data ft = synthetic.multitask_ft(of: pt, examples: 64, tasks: 2) split train 0.5, val 0.5
"""


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _flat(d: dict, names) -> torch.Tensor:
    return torch.cat([d[n].detach().flatten() for n in names])


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


class FakeData:
    """Seeded float64 batches in the plan's shapes, standing in for runtime.data.Data."""

    def __init__(self, plan, seed=5):
        self.plan, self.g = plan, torch.Generator().manual_seed(seed)
        self.sources = {d.name: d for d in plan.datasets}

    def batch(self, stream: str):
        ref = {"pretrain": self.plan.pretrain.data, "finetune": self.plan.finetune.data,
               "objective": self.plan.objective.data}[stream]
        source = self.sources[ref.dataset]
        shape = (source.x_dim,) if isinstance(source.x_dim, int) else tuple(source.x_dim)
        n = min(ref.batch, 16)
        x = torch.randn(n, *shape, generator=self.g) if len(shape) == 1 else torch.rand(n, *shape, generator=self.g)
        return x, (torch.rand(n, source.y_dim, generator=self.g) > 0.5).double()

    def reseed(self, seed):
        pass


def _trainer(spec: str, data=True) -> Trainer:
    plan = compile_spec(spec, "t.mpt")
    torch.manual_seed(0)
    return Trainer(plan, Program(plan, torch.device("cpu"), dtype=torch.float64), FakeData(plan) if data else None)


# ---- 1. coupled weight decay: IFT differentiates grad L + lambda theta = 0 -------------------------------
RIDGE = MULTITASK + """
model encoder = linear(out: 1, bias: false)
head ft_head = linear(out: 2)
meta w: vector[3] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * mse(encoder(x), y))  optimizer OPTIMIZER }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ESTIMATOR
"""
DECAY = 0.05


def _ridge_optimum(X, Y, phi, decay):
    """theta*(phi) solving grad L + decay theta = 0 for L = mean_{b,k} w_k (X t - Y_k)^2, w = 2 sigmoid(phi):
    [(2 S / nK) X^T X + decay I] t = (2 / nK) X^T Y w with S = sum_k w_k (differentiable in phi)."""
    w, (n, k) = 2 * torch.sigmoid(phi), Y.shape
    A = 2 * w.sum() / (n * k) * X.T @ X + decay * torch.eye(X.shape[1])
    return torch.linalg.solve(A, 2 / (n * k) * X.T @ (Y @ w))


@pytest.mark.parametrize("optimizer", [f"sgd(lr: 0.1, weight_decay: {DECAY})",
                                       f"sgd(lr: 0.1, momentum: 0.9, weight_decay: {DECAY})",
                                       f"adam(lr: 0.01, weight_decay: {DECAY})"], ids=["sgd", "sgd-momentum", "adam"])
@pytest.mark.parametrize("estimator", ["ift(cg(iters: 100, tol: 1e-14))",
                                       "ift(neumann(terms: 2000, scale: auto, power_iters: 300))"],
                         ids=["cg", "neumann-auto"])
def test_ift_with_weight_decay_matches_the_closed_form(optimizer, estimator):
    trainer = _trainer(RIDGE.replace("OPTIMIZER", optimizer).replace("ESTIMATOR", estimator), data=False)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(32, 5, generator=g), torch.randn(32, 3, generator=g)
    ft = [(torch.randn(32, 5, generator=g), (torch.rand(32, 2, generator=g) > 0.5).double()) for _ in range(2)]
    val = (torch.randn(32, 5, generator=g), (torch.rand(32, 2, generator=g) > 0.5).double())
    phi = torch.tensor([0.3, -0.7, 1.1])
    state = trainer.init_state()
    state.metas = {"w": phi.clone().requires_grad_()}
    state.params["encoder.weight"] = _ridge_optimum(X, Y, phi, DECAY)[None, :].clone().requires_grad_()
    theta = [state.params["encoder.weight"]]            # the fixed point of the PT optimizer with decay
    grad = torch.autograd.grad(trainer.loss_pt(state.params, state.metas, X, Y), theta)[0]
    assert float((grad + DECAY * theta[0]).detach().norm()) < 1e-12
    _, v, _ = trainer.ft.through_ft(trainer, state, ft, val)
    exact_phi = phi.clone().requires_grad_()                # v^T dtheta*/dphi through the closed form
    exact = torch.autograd.grad(_ridge_optimum(X, Y, exact_phi, DECAY) @ v[0][0], exact_phi)[0]
    _, hg, _ = trainer.hypergradient(state, (X, Y), ft, val)
    assert _rel(hg["w"], exact) < 1e-8
    reference, _ = hypergradient.reference(trainer, state, (X, Y), v)    # what `check every` compares with
    assert _rel(reference["w"], exact) < 1e-8
    assert 1 - trainer.check(state, hg) < 1e-12
    blind, _ = ift(trainer.loss_pt, state.params, state.metas, (X, Y), v, trainer.pt_keys, cg,
                   {"iters": 100, "tol": 1e-14})                           # H alone, as before the fix:
    assert _rel(blind["w"], exact) > 1e-2                                   # 1.6% off, the test can fail


def test_ift_solvers_take_the_decay_as_h_plus_lambda_i():
    """ift(weight_decay) on a quadratic: p = (H + lambda I)^-1 v exactly, the mixed term unchanged."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 4, generator=g), torch.randn(4, 2, generator=g)
    A = A @ A.T + 0.1 * torch.eye(4)
    phi, v = torch.randn(2, generator=g).requires_grad_(), torch.randn(4, generator=g)

    def loss(params, metas, x, y):
        return 0.5 * params["t"] @ A @ params["t"] - params["t"] @ B @ metas["phi"]
    t = torch.randn(4, generator=g).requires_grad_()
    hg, _ = ift(loss, {"t": t}, {"phi": phi}, (None, None), [v], ["t"], cg, {"iters": 50, "tol": 1e-14},
                weight_decay=0.3)
    assert _rel(hg["phi"], torch.linalg.solve(A + 0.3 * torch.eye(4), v) @ B) < 1e-10


# ---- 2. `update encoder, ft_head`: the online step trains the head; the replay is the loop's window ----
FULL_FT = MULTITASK + """
model encoder = mlp(hidden: [4])
head pt_head = linear(out: 3)
head ft_head = linear(out: 2)
meta w: vector[3] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 16  loss mean(task_weight * bce(pt_head(encoder(x)), y))  optimizer OPTIMIZER  steps 3 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)
           unroll 2 update encoder, ft_head }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
train meta_steps 2 warmup 2 seed 0 device cpu
"""


def _capture_meta_steps(trainer, monkeypatch):
    """Runs the loop, recording at each meta-step the window the replay starts from, the loop's state
    (theta_P, psi, phi), the batches, and the hypergradient the estimator returned."""
    seen, real = [], Trainer.hypergradient

    def spy(self, state, pt_batch, ft_batches, val_batch):
        params0, opt0, batches = state.est["window"]
        seen.append({"params0": {k: t.clone() for k, t in params0.items()}, "opt0": opt0, "batches": list(batches),
                     "params": {k: t.detach().clone() for k, t in state.params.items()},
                     "metas": {k: t.detach().clone() for k, t in state.metas.items()},
                     "ft": ft_batches, "val": val_batch})
        out = real(self, state, pt_batch, ft_batches, val_batch)
        seen[-1]["hg"] = {n: t.detach().clone() for n, t in out[1].items()}
        return out
    monkeypatch.setattr(Trainer, "hypergradient", spy)
    meta_train(trainer, trainer.init_state(), None)
    return seen


def _replay(trainer, window, metas):
    """theta_P by the P PT steps of the window from its snapshot (the pure optimizer update), at `metas`."""
    keys, state = trainer.pt_keys, window["opt0"]
    theta = [window["params0"][k].clone() for k in keys]
    for x, y in window["batches"]:
        theta = [t.requires_grad_() for t in theta]
        grads = torch.autograd.grad(trainer.loss_pt({**window["params0"], **dict(zip(keys, theta))}, metas, x, y),
                                    theta)
        theta, state = trainer.pt_opt.update([t.detach() for t in theta], list(grads), state)
    return dict(zip(keys, theta))


@pytest.mark.parametrize("optimizer", ["sgd(lr: 0.3, momentum: 0.9, weight_decay: 0.01)", "adam(lr: 0.01)"],
                         ids=["sgd", "adam"])
def test_pt_unroll_replays_the_loops_window_with_update_encoder(optimizer, monkeypatch):
    trainer = _trainer(FULL_FT.replace("OPTIMIZER", optimizer))
    seen = _capture_meta_steps(trainer, monkeypatch)
    assert len(seen) == 2
    for step in seen:                                   # the replay reaches the loop's theta_P bit for bit
        replayed = _replay(trainer, step, step["metas"])
        assert all(torch.equal(replayed[k], step["params"][k]) for k in trainer.pt_keys)
    last = seen[-1]

    def objective(phi):                                 # phi -> replayed theta_P -> K FT steps -> L_val
        metas = {"w": phi.clone().requires_grad_()}
        view = executor.State({**last["params"], **_replay(trainer, last, metas)}, metas, None, None, None)
        view.params = {k: t.detach().requires_grad_() for k, t in view.params.items()}
        return float(trainer.ft.through_ft(trainer, view, last["ft"], last["val"])[0])
    eps, phi = 1e-4, last["metas"]["w"]                # rounding-limited below: the hypergradient is ~1e-5
    fd = torch.tensor([(objective(phi + eps * e) - objective(phi - eps * e)) / (2 * eps) for e in torch.eye(3)])
    assert _rel(last["hg"]["w"], fd) < 1e-6 and fd.abs().max() > 1e-5


def test_the_online_ft_step_trains_the_ft_head_alone():
    trainer = _trainer(FULL_FT.replace("OPTIMIZER", "sgd(lr: 0.3)"))
    state = trainer.init_state()
    before = {k: t.detach().clone() for k, t in state.params.items()}
    trainer.ft_online_step(state, trainer.data.batch("finetune"))
    changed = {k for k in before if not torch.equal(before[k], state.params[k])}
    assert changed == {"ft_head.weight", "ft_head.bias"}
    assert trainer.ft_keys == ["encoder.0.weight", "encoder.0.bias", "ft_head.weight", "ft_head.bias"]


# ---- 3. PT `unroll` with an augmentation over P = 70 steps --------------------------------------------
ROT70 = """
data pt = images.digits(size: 6)
data ft = images.digits(size: 6) split train 0.5, val 0.5
model encoder = cnn2d(channels: [2], pool: flatten, activation: tanh)
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta phi: scalar = 23
pretrain { data pt batch 4  loss mean(ce(pt_head(encoder(x)), y))  optimizer sgd(lr: 0.1)  steps 70
           augment rotate(mean: phi, std: 5) }
finetune { data ft.train batch 8  loss mean(ce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5) }
meta_objective mean(ce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
"""


def test_pt_unroll_over_70_augmented_steps_replays_the_loops_noise():
    trainer = _trainer(ROT70)
    memo = trainer.prog.memos[0]
    draws, real_get = [], memo.get

    def counting(x, draw):
        return real_get(x, lambda: draws.append(1) or draw())
    memo.get = counting
    pt = [trainer.data.batch("pretrain") for _ in range(70)]
    ft, val = [trainer.data.batch("finetune")], trainer.data.batch("objective")
    start = trainer.init_state()
    params0 = {k: t.detach().clone() for k, t in start.params.items()}

    def window(phi):
        """The 70 PT steps from the same start on the same batches, then the hypergradient (replay)."""
        state = trainer.init_state()
        state.params = {k: t.clone().requires_grad_() for k, t in params0.items()}
        state.metas = {"phi": torch.tensor(phi).requires_grad_()}
        trainer.pt.open_window(trainer, state)
        for batch in pt:
            trainer.pt.record(state, batch)
            trainer.pt_step(state, batch)
        return trainer.hypergradient(state, pt[-1], ft, val)

    _, hg, _ = window(23.0)
    assert len(draws) == 70                             # one draw per PT batch: the replay drew nothing new
    eps = 1e-5
    fd = (float(window(23.0 + eps)[0]) - float(window(23.0 - eps)[0])) / (2 * eps)
    assert len(draws) == 70 and abs(fd) > 1e-6
    assert abs(float(hg["phi"]) - fd) / abs(fd) < 1e-5


# ---- 4. `check every` under PT `unroll`: the IFT reference, not the estimate itself -----------------------
UNROLL_CHECK = MULTITASK + """
model encoder = mlp(hidden: [4])
head pt_head = linear(out: 3)
head ft_head = linear(out: 2)
meta w: vector[3] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 16  loss mean(task_weight * bce(pt_head(encoder(x)), y))  optimizer sgd(lr: 0.3)  steps 2 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
"""


def test_check_under_pt_unroll_compares_with_the_cg_reference():
    trainer = _trainer(UNROLL_CHECK)
    state = trainer.init_state()
    trainer.pt.open_window(trainer, state)
    pt = [trainer.data.batch("pretrain") for _ in range(2)]
    for batch in pt:
        trainer.pt.record(state, batch)
        trainer.pt_step(state, batch)
    ft, val = [trainer.data.batch("finetune")] * 2, trainer.data.batch("objective")
    _, hg, _ = trainer.hypergradient(state, pt[-1], ft, val)
    cosine = trainer.check(state, hg)
    _, v, direct = trainer.ft.through_ft(trainer, state, ft, val)
    reference, _ = ift(trainer.loss_pt, state.params, state.metas, pt[-1], v, trainer.pt_keys, cg,
                       {"iters": 500, "tol": 1e-12})
    expected = _cos(_flat(hg, ["w"]), _flat({"w": reference["w"] + direct["w"]}, ["w"]))
    assert abs(cosine - expected) < 1e-6
    assert cosine < 0.99                                # unroll over 2 steps is not the IFT answer here


# ---- 5. lambda_max and the solver residual as logged ------------------------------------------------------
NEUMANN = MULTITASK + """
model encoder = linear(out: 2)
head pt_head = linear(out: 3)
head ft_head = linear(out: 2)
meta w: vector[3] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 16  loss mean(task_weight * bce(pt_head(encoder(x)), y))
           optimizer sgd(lr: 0.3, weight_decay: 0.01)  steps 2 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(neumann(terms: 3, scale: auto, power_iters: 400))
"""


def test_lambda_max_and_the_residual_are_logged_and_exact():
    trainer = _trainer(NEUMANN)
    state = trainer.init_state()
    for _ in range(3):
        pt = trainer.data.batch("pretrain")
        trainer.pt_step(state, pt)
    ft, val = [trainer.data.batch("finetune")], trainer.data.batch("objective")
    _, _, info = trainer.hypergradient(state, pt, ft, val)
    logged = {**executor._timings(info), "solver_residual": info["residual"]}
    assert "alpha_lambda_max" not in logged
    keys = trainer.pt_keys
    shapes = [state.params[k].shape for k in keys]
    metas = {n: t.detach() for n, t in state.metas.items()}

    def loss_of(flat):
        parts = [p.reshape(s) for p, s in zip(torch.split(flat, [s.numel() for s in shapes]), shapes)]
        return trainer.loss_pt({**state.params, **dict(zip(keys, parts))}, metas, *pt)
    n = sum(s.numel() for s in shapes)                            # the PT optimizer's decay: H + lambda I
    H = torch.autograd.functional.hessian(loss_of, _flat(state.params, keys)) + 0.01 * torch.eye(n)
    top = float(torch.linalg.eigvalsh(H).abs().max())
    assert abs(logged["lambda_max"] - top) / top < 1e-6
    assert abs(logged["neumann_alpha"] - 1 / logged["lambda_max"]) < 1e-12
    _, v, _ = trainer.ft.through_ft(trainer, state, ft, val)
    v = torch.cat([t.flatten() for t in v])
    c = v.clone()
    for _ in range(3):                                            # (I - alpha H)^J v, J = terms
        c = c - logged["neumann_alpha"] * H @ c
    assert abs(logged["solver_residual"] - float(c.norm() / v.norm())) < 1e-10


# ---- the standalone script and the shipped specs ------------------------------------------------------------
EMIT = """
spec decayed "weight decay and a fine-tuned encoder"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4], activation: tanh)
head pt_head = linear(out: 12)
head ft_head = linear(out: 2)
meta w: vector[12] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y))  steps 3
           optimizer sgd(lr: 0.05, momentum: 0.9, weight_decay: 0.05) }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  unroll 2 update encoder, ft_head }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(cg(iters: 5))
meta_optimizer adam(lr: 0.1)
train meta_steps 3 warmup 2 seed 0 device cpu log_every 1
"""


def test_the_standalone_script_decays_and_trains_the_head_online_as_mptc_run(tmp_path):
    import subprocess
    import sys

    from mptc.cli import main
    spec = tmp_path / "decayed.mpt"
    spec.write_text(EMIT)
    torch.set_default_dtype(torch.float32)               # a run as users get it (the fixture restores float64)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    script = subprocess.run([sys.executable, "-m", "mptc", "compile", str(spec), "--emit", "python"],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "standalone.py").write_text(script)
    subprocess.run([sys.executable, str(tmp_path / "standalone.py"), "--out", str(tmp_path / "emit")], check=True,
                   capture_output=True, cwd=tmp_path)
    assert (tmp_path / "emit" / "meta.json").read_text() == (tmp_path / "run" / "meta.json").read_text()


def test_no_shipped_spec_fine_tunes_a_module_pre_training_trains_online():
    """The online FT step trains `update` minus what PT trains: for every shipped spec that is all of
    `update`, so their runs are unchanged by defect 2's fix."""
    from pathlib import Path
    specs = sorted((Path(__file__).resolve().parent.parent / "specs").rglob("*.mpt"))
    assert len(specs) >= 8
    for path in specs:
        plan = compile_spec(path.read_text(), str(path))
        assert not set(plan.finetune.trains) & set(plan.pretrain.trains), path.name

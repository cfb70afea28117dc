"""Meta networks, differentiable augmentations, CNNs and the paper's two synthetic specs (issue 5).

Numerical checks in float64: each augmentation's derivative in its meta-parameter (gradcheck); the whole
meta-gradient through a meta network and through a rotation augmentation (exact PT `unroll`, K FT steps,
the meta-objective) against central finite differences of the same map phi -> L_val.
"""
import json
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors
from mptc.runtime.augment import CROP, JITTER, ROTATE, WARP, rotate_images
from mptc.runtime.loop import Trainer
from mptc.runtime.images import digits
from mptc.runtime.models import cnn1d, cnn2d
from mptc.runtime.program import Program


# ---- augmentations -----------------------------------------------------------------------------------
def test_rotation_by_90_degrees_is_rot90_on_a_digit():
    x = digits(size=8).splits["all"][0][:4]
    assert torch.allclose(rotate_images(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate_images(x, torch.full((4,), -90.0)), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate_images(x, 0.0), x, atol=1e-6)


def test_the_dataset_rotation_is_the_augmentation_rotation():
    plain, turned = digits(portion=[0.0, 0.1]), digits(portion=[0.0, 0.1], rotate=90)
    assert torch.allclose(turned.splits["all"][0], torch.rot90(plain.splits["all"][0], 1, dims=(2, 3)), atol=1e-5)
    assert turned.info["rotation"] == 90


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("aug, shape, name, value", [
    (ROTATE, (3, 1, 6, 6), "mean", torch.tensor(17.3)),
    (JITTER, (3, 2, 10), "std", torch.tensor([0.1, 0.2, 0.3])),
    (CROP, (3, 2, 20), "keep", torch.tensor([0.31, 0.52, 0.77])),
    (WARP, (3, 2, 20), "strength", torch.tensor([0.013, 0.021, 0.034])),
])
def test_each_augmentation_is_differentiable_in_its_meta_parameter(float64, aug, shape, name, value):
    x = torch.rand(shape, generator=_gen()) + torch.linspace(0, 1, shape[-1])
    eps = aug.noise(shape, _gen()).double()
    extra = {"std": 4.0} if aug is ROTATE else {}
    phi = value.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: aug.apply(x, eps, **{name: p}, **extra), (phi,))
    assert torch.autograd.gradcheck(lambda t: aug.apply(t, eps, **{name: phi.detach()}, **extra),
                                    (x.clone().requires_grad_(),))


def test_crop_keeps_a_window_and_warp_of_zero_strength_is_the_identity():
    x = torch.ones(2, 3, 100)
    kept = CROP.apply(x, torch.tensor([0.0, 1.0]), keep=0.3, softness=0.01)
    assert torch.allclose(kept.sum(-1), torch.full((2, 3), 30.0), atol=0.5)
    assert torch.allclose(kept[0, :, :30], torch.ones(3, 30), atol=1e-3) and kept[1, :, :69].abs().max() < 1e-3
    signal = torch.randn(2, 3, 100, generator=_gen())
    assert torch.allclose(WARP.apply(signal, WARP.noise(signal.shape, _gen()), strength=0.0), signal, atol=1e-5)


# ---- models ------------------------------------------------------------------------------------------
def test_cnns_take_images_and_signals():
    assert cnn2d(in_dim=(1, 8, 8), channels=[4, 4], pool="flatten")(torch.zeros(2, 1, 8, 8)).shape == (2, 256)
    assert cnn1d(in_dim=(12, 1000), channels=[8, 8, 8, 8])(torch.zeros(2, 12, 1000)).shape == (2, 8)


# ---- the whole meta-gradient against finite differences ----------------------------------------------
NET = """
data pt = synthetic.multitask(examples: 64, dim: 5, tasks: 3, related: 1, factors: 4, related_factors: 1)
data ft = synthetic.multitask_ft(of: pt, examples: 64, tasks: 2) split train 0.5, val 0.5
model encoder = linear(out: 2)
head pt_head = linear(out: 3)
head ft_head = linear(out: 2)
meta n: network mlp(hidden: [4, 1], activation: tanh, last_activation: false)
let losses = bce(pt_head(encoder(x)), y)
let weight = 2 * sigmoid(n(x))
pretrain { data pt batch 16  loss mean(weight * losses)  optimizer sgd(lr: 0.5)  steps 3 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
"""
ROT = """
data pt = images.digits(size: 6)
data ft = images.digits(size: 6) split train 0.5, val 0.5
model encoder = cnn2d(channels: [3], pool: flatten, activation: tanh)
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta phi: scalar = 23
pretrain { data pt batch 8  loss mean(ce(pt_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  steps 3
           augment rotate(mean: phi, std: 5) }
finetune { data ft.train batch 8  loss mean(ce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5) }
meta_objective mean(ce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
"""


SIMCLR = """
data pt = synthetic.multitask(examples: 64, dim: 12, tasks: 3, related: 1, factors: 4, related_factors: 1)
data ft = synthetic.multitask_ft(of: pt, examples: 64, tasks: 2) split train 0.5, val 0.5
model encoder = linear(out: 4)
head proj = linear(out: 3)
head ft_head = linear(out: 2)
meta n: network mlp(hidden: [4, 1], activation: tanh, last_activation: false)
meta t: scalar = 0.5
let strength = 0.1 * sigmoid(n(x))
pretrain { data pt batch 16  optimizer sgd(lr: 0.5)  steps 3
           loss mean(nt_xent(proj(encoder(warp(jitter(x, std: 0.1), strength: strength, knots: 3))),
                             proj(encoder(crop(warp(x, strength: strength), keep: 0.8))), t)) }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.5)  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: unroll
"""


def _batches(plan, g):
    dims = {d.name: d for d in plan.datasets}

    def one(ref):
        source = dims[ref.dataset]
        shape = (source.x_dim,) if isinstance(source.x_dim, int) else tuple(source.x_dim)
        x = torch.randn(8, *shape, generator=g) if len(shape) == 1 else torch.rand(8, *shape, generator=g)
        return x, (torch.rand(8, source.y_dim, generator=g) > 0.5).double()
    pt = [one(plan.pretrain.data) for _ in range(plan.pretrain.steps)]
    ft = [one(plan.finetune.data) for _ in range(plan.finetune.unroll)]
    return pt, ft, one(plan.objective.data)


@pytest.mark.parametrize("spec", [NET, ROT, SIMCLR], ids=["meta-network", "rotation", "simclr-warp-network"])
def test_meta_gradient_matches_central_finite_differences(float64, spec):
    plan = compile_spec(spec, "fd.mpt")
    torch.manual_seed(0)
    prog = Program(plan, torch.device("cpu"), dtype=torch.float64)
    trainer = Trainer(plan, prog, data=None)
    pt, ft, val = _batches(plan, torch.Generator().manual_seed(1))
    start = trainer.init_state()
    params0 = {k: t.detach().clone() for k, t in start.params.items()}
    metas0 = {k: t.detach().clone() for k, t in start.metas.items()}

    def window(metas):
        """P PT steps from the same start on the same batches (same augmentation noise), then L_val."""
        state = trainer.init_state()
        state.params = {k: t.clone().requires_grad_() for k, t in params0.items()}
        state.metas = {k: t.clone().requires_grad_() for k, t in metas.items()}
        trainer.pt.open_window(trainer, state)
        for batch in pt:
            trainer.pt.record(state, batch)
            trainer.pt_step(state, batch)
        return trainer.hypergradient(state, pt[-1], ft, val)

    _, hg, _ = window(metas0)
    flat = torch.cat([hg[n].flatten() for n in metas0])
    picks = list(range(len(flat))) if len(flat) <= 6 else \
        torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:6].tolist()
    eps, fd = 1e-6, []
    for i in picks:
        def at(sign):
            vec = torch.cat([t.flatten() for t in metas0.values()]).clone()
            vec[i] += sign * eps
            parts = torch.split(vec, [t.numel() for t in metas0.values()])
            return float(window({n: p.reshape(t.shape) for (n, t), p in zip(metas0.items(), parts)})[0])
        fd.append((at(1) - at(-1)) / (2 * eps))
    fd, est = torch.tensor(fd), flat[torch.tensor(picks)]
    assert float((est - fd).norm() / fd.norm()) < 1e-5
    assert fd.abs().max() > 1e-5                                    # not vacuous


# ---- compile-time checks -------------------------------------------------------------------------------
def _errors(text):
    with pytest.raises(SpecErrors) as e:
        compile_spec(text, "t.mpt")
    return [x.message for x in e.value.errors]


def test_augment_arguments_are_checked():
    assert any("'mean' must be one number or one per example" in m
               for m in _errors(ROT.replace("rotate(mean: phi", "rotate(mean: [1, 2, 3]")))
    assert any("rotate has no parameter 'men'" in m for m in _errors(ROT.replace("rotate(mean:", "rotate(men:")))


def test_lowered_plan_carries_the_augmentation_and_the_network_input():
    plan = compile_spec(ROT, "r.mpt")
    assert type(plan.pretrain.loss).__name__ == "Augmented" and plan.pretrain.loss.augment == "rotate"
    assert plan.modules[0].in_dim == (1, 6, 6)
    assert compile_spec(NET, "n.mpt").metas[0].in_dim == 5


# ---- the paper's specs, shrunken, end to end ------------------------------------------------------------
ROTATION = """
spec rotation_tiny "tiny"
data pt = images.digits(portion: [0.0, 0.5])
data ft = images.digits(portion: [0.5, 1.0], rotate: 90, rotate_sigma: 5, seed: 1) split train 0.3, val 0.3, test 0.4
model encoder = cnn2d(channels: [4], pool: flatten)
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta phi: scalar = 30 in [-180, 360]
pretrain { data pt batch 32  loss mean(ce(pt_head(encoder(x)), y))  steps 2  augment rotate(mean: phi, std: 5) }
finetune { data ft.train batch 32  loss mean(ce(ft_head(encoder(x)), y)) }
meta_objective mean(ce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(cg(iters: 3, damping: 0.01))
meta_optimizer adam(lr: 5)
train meta_steps 4 warmup 2 seed 0 device cpu
evaluate restarts(inits: [0, 60])
"""
NOISY = """
spec noisy_tiny "tiny"
data pt = images.digits(flatten: true, portion: [0.0, 0.5], corrupt: 0.5)
data ft = images.digits(flatten: true, portion: [0.5, 1.0]) split train 0.3, val 0.3, test 0.4
model encoder = mlp(hidden: [16])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta n: network mlp(hidden: [8, 1], last_activation: false)
let losses = bce(pt_head(encoder(x)), y)
let weight = 2 * sigmoid(n(detach(losses)))
pretrain { data pt batch 32  loss mean(weight * losses)  steps 2 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y)) }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.01)
train meta_steps 4 warmup 2 seed 0 device cpu
"""


def _run(tmp_path, text, name):
    spec = tmp_path / f"{name}.mpt"
    spec.write_text(text)
    assert main(["run", str(spec), "--out", str(tmp_path / name), "--quiet"]) == 0
    return json.loads((tmp_path / name / "eval.json").read_text())


def test_rotation_spec_runs_and_reports_the_angle_error(tmp_path):
    ev = _run(tmp_path, ROTATION, "rot")
    err = ev["rotation_error_deg"]
    assert err["target"] == 90 and err["inits"] == [0.0, 60.0] and len(err["values"]) == 2
    assert all(abs(abs(f - 90) - e) < 1e-6 for f, e in zip(err["learned"], err["values"]))
    assert err["learned"] != err["inits"]


def test_the_committed_rotation_spec_runs_shrunken_with_its_cycles(tmp_path):
    """specs/paper/rotation.mpt itself, its budget cut by --set: 3 meta-steps, a reset after each (two
    resets per run), two restarts; each restart's path has one angle per meta-step."""
    spec = Path(__file__).resolve().parents[1] / "specs" / "paper" / "rotation.mpt"
    sets = ["train.meta_steps=3", "train.warmup=2", "train.reset_every=1", "train.log_every=1", "pretrain.steps=2",
            "finetune.unroll=2",
            "evaluate=restarts(inits: [0, 60])"]
    argv = ["run", str(spec), "--out", str(tmp_path / "rot"), "--quiet"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    ev = json.loads((tmp_path / "rot" / "eval.json").read_text())
    assert ev["rotation_error_deg"]["inits"] == [0.0, 60.0] and [len(p) for p in ev["restarts"]["paths"]] == [3, 3]
    rows = [json.loads(r) for r in (tmp_path / "rot" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]      # warm-up 2 + window 2 per cycle


def test_noisy_labels_spec_runs_and_reports_the_weight_ratio(tmp_path):
    ev = _run(tmp_path, NOISY, "noisy")
    w = ev["clean_over_noisy_weight"]
    assert w["clean"] + w["noisy"] == 898 and w["ratio"] > 0
    meta = json.loads((tmp_path / "noisy" / "meta.json").read_text())
    assert not any(k.startswith("n.") for k in meta)                # network weights live in the checkpoint
    assert "n.0.weight" in torch.load(tmp_path / "noisy" / "checkpoint.pt")["metas"]


# ---- augmentations inside expressions: SimCLR's two views ------------------------------------------------
VIEWS = """
data pt = synthetic.multitask(examples: 32, dim: 6, tasks: 2, related: 1, factors: 2, related_factors: 1)
data ft = synthetic.multitask_ft(of: pt, examples: 32, tasks: 2) split train 0.5, val 0.5
model encoder = linear(out: 3)
head ft_head = linear(out: 2)
meta s: scalar = 1
let view = jitter(x, std: s)
pretrain { data pt  loss LOSS }
finetune { data ft.train  loss mean(bce(ft_head(encoder(x)), y)) }
meta_objective mean(bce(ft_head(encoder(x)), y)) + 0 * s on ft.val
"""


def _loss_of(pt_loss):
    plan = compile_spec(VIEWS.replace("LOSS", pt_loss), "v.mpt")
    prog = Program(plan, torch.device("cpu"))
    loss = prog.loss(plan.pretrain.loss)
    return lambda x: float(loss(prog.init_params(), prog.init_metas(), x, None))


def test_each_augmentation_call_is_an_independent_view_and_a_let_is_one_view():
    x = torch.zeros(4, 6)
    two_calls = _loss_of("mean(abs(encoder(jitter(x, std: 1)) - encoder(jitter(x, std: 1))))")
    assert two_calls(x) > 1e-3                           # two calls: two noise draws
    assert two_calls(x) == two_calls(x)                  # the same batch again: the same draws
    assert _loss_of("mean(abs(encoder(view) - encoder(view)))")(x) == 0.0
    assert _loss_of("mean(abs(encoder(jitter(x, std: s)) - encoder(jitter(x, std: 0))))")(x) > 1e-3


def test_functions_take_number_arguments():
    """`sigmoid(-2)`, `exp(1 / 4)`: a function of number literals is a constant (it used to be a TypeError
    at the first PT step, torch functions wanting tensors)."""
    import math
    x = torch.zeros(4, 6)
    assert _loss_of("sigmoid(-2) + exp(1 / 4) + 0 * mean(encoder(x))")(x) == pytest.approx(
        1 / (1 + math.exp(2)) + math.exp(0.25), rel=1e-6)
    assert _loss_of("mean(s * sigmoid(2 * -1) + 0 * encoder(x))")(x) == pytest.approx(1 / (1 + math.exp(2)), rel=1e-6)


def test_nt_xent_is_the_simclr_loss(float64):
    from mptc.runtime.functions import nt_xent
    g = _gen()
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    expected = []
    for i in range(10):                                  # the definition, one anchor at a time
        partner = (i + 5) % 10
        logits = torch.stack([z[i] @ z[k] / 0.2 for k in range(10) if k != i])
        expected.append(-(z[i] @ z[partner] / 0.2 - torch.logsumexp(logits, 0)))
    expected = torch.stack(expected)
    assert torch.allclose(nt_xent(a, b, 0.2), (expected[:5] + expected[5:]) / 2, atol=1e-12)
    assert torch.autograd.gradcheck(lambda p, q, t: nt_xent(p, q, t),
                                    (a.requires_grad_(), b.requires_grad_(), torch.tensor(0.3, requires_grad=True)))


@pytest.mark.parametrize("loss, message", [
    ("mean(encoder(jitter(x, y, std: 1)))", "jitter augments one input, e.g. jitter(x, ...), got 2 positional"),
    ("mean(encoder(jitter(x, sdt: 1)))", "jitter has no parameter 'sdt'"),
    ("mean(encoder(jitter(x, std: [1, 2, 3])))", "'std' must be one number or one per example"),
    ("mean(encoder(jiter(x, std: 1)))", "unknown function or module 'jiter'"),
    ("mean(nt_xent(encoder(x), x, 0.1))", "nt_xent needs two views of the same shape"),
])
def test_augmentation_calls_are_checked(loss, message):
    errors = _errors(VIEWS.replace("LOSS", loss))
    assert any(message in m for m in errors), errors


def test_a_misspelt_augmentation_gets_a_did_you_mean():
    with pytest.raises(SpecErrors) as e:
        compile_spec(VIEWS.replace("LOSS", "mean(encoder(jiter(x, std: 1)))"), "t.mpt")
    assert e.value.errors[0].hint == "jitter"

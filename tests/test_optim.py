"""The optimizers' two forms agree: the pure, differentiable `update` and the fused in-place `step_`,
and `update` keeps finite derivatives where a parameter never had a gradient."""
import pytest
import torch

from mptc.runtime.optim import adam, clone_state, sgd

OPTIMIZERS = {
    "sgd": lambda: sgd(lr=0.1),
    "sgd-momentum-decay": lambda: sgd(lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda: adam(lr=0.01),
    "adam-decay": lambda: adam(lr=0.01, weight_decay=0.1, beta1=0.8),
    "sgd-halflife": lambda: sgd(lr=0.1, momentum=0.5, halflife=2),
    "adam-halflife": lambda: adam(lr=0.01, halflife=1.5),
}


@pytest.mark.parametrize("opt", [sgd(lr=0.8, halflife=2), adam(lr=0.8, halflife=2)], ids=["sgd", "adam"])
def test_halflife_halves_the_step_every_halflife_steps(opt):
    """With a constant gradient both optimizers step by lr * 0.5 ** ((t - 1) / halflife) (Adam: m/sqrt(v) = 1)."""
    p, state, moves = [torch.tensor([0.0], dtype=torch.float64)], None, []
    state = opt.init(p)
    for _ in range(5):
        new, state = opt.update(p, [torch.tensor([1.0], dtype=torch.float64)], state)
        moves.append(float(p[0] - new[0]))
        p = new
    assert moves == pytest.approx([0.8 * 0.5 ** (t / 2) for t in range(5)], rel=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_in_place_equals_the_pure_update(name):
    opt, g = OPTIMIZERS[name](), torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    pure, pure_state = [p.clone() for p in params], opt.init(params)
    fast, fast_state = [p.clone() for p in params], opt.init(params)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        pure, pure_state = opt.update(pure, grads, pure_state)
        fast_state = opt.step_(fast, grads, fast_state)
    for a, b in zip(pure, fast):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name", ["adam", "adam-decay", "adam-halflife"])
def test_adams_fused_kernel_and_its_foreach_fallback_both_equal_the_pure_update(name, layout):
    """Contiguous tensors take torch's fused Adam kernel, a transposed view the `_foreach_*` kernels: both the
    pure update's values to 1e-12 over 20 steps (float64), and the fused one's float32 steps within 1e-6."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        opt, g = OPTIMIZERS[name](), torch.Generator().manual_seed(1)
        base = [torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(4, generator=g, dtype=dtype)]
        fast = [base[0].clone().t().contiguous().t() if layout == "transposed" else base[0].clone(), base[1].clone()]
        assert fast[0].is_contiguous() == (layout == "contiguous")
        pure, pure_state, fast_state = [p.clone() for p in base], opt.init(base), opt.init(fast)
        for _ in range(20):
            grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in base]
            pure, pure_state = opt.update(pure, grads, pure_state)
            fast_state = opt.step_(fast, grads, fast_state)
        for a, b in zip(pure + pure_state["v"], fast + fast_state["v"]):
            assert torch.allclose(a, b, rtol=tol, atol=tol)


def test_clone_state_is_untouched_by_later_steps():
    opt = adam(lr=0.1)
    params = [torch.zeros(3)]
    state = opt.step_(params, [torch.ones(3)], opt.init(params))
    copy = clone_state(state)
    opt.step_(params, [torch.ones(3)], state)
    assert copy["t"] == 1 and torch.equal(copy["m"][0], torch.full((3,), 0.1))


def test_adam_update_has_finite_derivatives_where_a_gradient_was_always_zero():
    opt = adam(lr=0.1)
    p = torch.zeros(2, requires_grad=True)
    w = torch.tensor([1.0, 0.0], requires_grad=True)      # the second coordinate never gets a gradient
    new, _ = opt.update([p], [w * 3.0], opt.init([p]))
    (d,) = torch.autograd.grad(new[0].sum(), w)
    assert torch.isfinite(d).all()

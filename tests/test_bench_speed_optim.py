"""The optimizers' `update` without a graph (in place on fresh buffers, large CPU tensors slice by slice:
runtime/optim.py `_adam_no_graph`, `_sgd_no_graph`) equals the differentiable form bit for bit, leaves its
inputs untouched, and `update` stays differentiable when a graph is recorded."""
import pytest
import torch

from mptc.runtime import optim
from mptc.runtime.optim import adam, sgd


def _reference(name, **kw):
    """The differentiable arithmetic of `update` as it was (out-of-place, one expression per step)."""
    beta1, beta2, eps, lr = kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8), kw["lr"]
    wd, halflife, momentum = kw.get("weight_decay", 0.0), kw.get("halflife"), kw.get("momentum", 0.0)

    def update(params, grads, state):
        grads = grads if not wd else [g + wd * p for p, g in zip(params, grads)]
        t = state["t"] + 1
        rate = optim._lr_at(lr, t, halflife)
        if name == "sgd":
            if momentum:
                grads = [momentum * b + g for b, g in zip(state["buf"], grads)]
            return [p - rate * g for p, g in zip(params, grads)], {"t": t, **({"buf": grads} if momentum else {})}
        m = [beta1 * m + (1 - beta1) * g for m, g in zip(state["m"], grads)]
        v = [beta2 * v + (1 - beta2) * g * g for v, g in zip(state["v"], grads)]
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        return [p - rate * (mi / c1) / ((vi / c2).sqrt() + eps) for p, mi, vi in zip(params, m, v)], \
            {"t": t, "m": m, "v": v}
    return update


def _same_bits(a, b):
    """Equal dtype, shape and bits (signed zeros and NaNs included)."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


CASES = {
    "adam": ("adam", {"lr": 1e-2}),
    "adam-decay-halflife": ("adam", {"lr": 0.3, "beta1": 0.8, "weight_decay": 0.1, "halflife": 1.5}),
    "sgd": ("sgd", {"lr": 0.1}),
    "sgd-momentum-decay": ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
}
SHAPES = [(), (7,), (3, 5), (2 * optim.SLICE + 13,), (1000, 300), (optim.SLICE * 3,)]


def _tensors(dtype, seed, zeros=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES:
        t = (torch.randn(shape, generator=g, dtype=torch.float64)
             * 10.0 ** torch.randint(-6, 3, shape, generator=g)).to(dtype)
        if zeros:
            t[t.abs() < 1e-3] = 0.0                     # exact zeros: v = 0 where a gradient never came
        out.append(t)
    return out


@pytest.mark.parametrize("grad_mode", [False, True], ids=["no_grad", "grad-mode-no-requires-grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])   # bf16: one kernel a step
@pytest.mark.parametrize("case", CASES)
def test_update_without_a_graph_equals_the_differentiable_arithmetic_bit_for_bit(case, dtype, grad_mode):
    name, kw = CASES[case]
    opt, ref = getattr(optim, name)(**kw), _reference(name, **kw)
    params = _tensors(dtype, 0)
    ours, ours_state = [p.clone() for p in params], opt.init(params)
    theirs, theirs_state = [p.clone() for p in params], opt.init(params)
    with torch.set_grad_enabled(grad_mode):
        for step in range(4):
            grads = _tensors(dtype, step + 1, zeros=True)
            kept = [g.clone() for g in grads], [p.clone() for p in ours], optim.clone_state(ours_state)
            ours, ours_state = opt.update(ours, grads, ours_state)
            theirs, theirs_state = ref(theirs, grads, theirs_state)
            for a, b in zip(ours + sum((v for v in ours_state.values() if isinstance(v, list)), []),
                            theirs + sum((v for v in theirs_state.values() if isinstance(v, list)), [])):
                assert not a.requires_grad and _same_bits(a, b)
            assert all(torch.equal(a, b) for a, b in zip(kept[0], grads))            # inputs untouched
            assert ours_state["t"] == theirs_state["t"]


def test_update_without_a_graph_on_non_contiguous_tensors():
    opt, ref = adam(lr=0.05), _reference("adam", lr=0.05)
    base = torch.randn(600, 500, dtype=torch.float32)
    params = [base.t(), base[::2]]                      # transposed (3 slices' worth) and strided views
    grads = [torch.randn(p.shape) for p in params]
    with torch.no_grad():
        ours, s1 = opt.update(params, grads, opt.init(params))
        theirs, s2 = ref(params, grads, opt.init(params))
    for a, b in zip(ours + s1["m"] + s1["v"], theirs + s2["m"] + s2["v"]):
        assert _same_bits(a, b) and a.stride() == b.stride()


def test_update_stays_differentiable_when_a_graph_is_recorded():
    for opt in (adam(lr=0.1), sgd(lr=0.1, momentum=0.9)):
        p = torch.randn(3, requires_grad=True)
        w = torch.randn(3, requires_grad=True)
        new, _ = opt.update([p], [w * 2.0], opt.init([p]))
        assert new[0].requires_grad
        dp, dw = torch.autograd.grad(new[0].sum(), [p, w])
        assert torch.isfinite(dp).all() and torch.isfinite(dw).all()


def test_mixed_dtypes_take_the_differentiable_form():
    opt = adam(lr=0.1)
    p = [torch.ones(4, dtype=torch.float64)]
    with torch.no_grad():
        new, state = opt.update(p, [torch.ones(4, dtype=torch.float32)], opt.init(p))
    assert new[0].dtype == torch.float64 and state["m"][0].dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_update_without_a_graph_on_cuda_equals_the_differentiable_arithmetic():
    opt, ref = adam(lr=0.01, weight_decay=0.1), _reference("adam", lr=0.01, weight_decay=0.1)
    params = [t.cuda() for t in _tensors(torch.float32, 0)]
    ours, s1 = params, opt.init(params)
    theirs, s2 = params, opt.init(params)
    with torch.no_grad():
        for step in range(3):
            grads = [t.cuda() for t in _tensors(torch.float32, step + 1, zeros=True)]
            ours, s1 = opt.update(ours, grads, s1)
            theirs, s2 = ref(theirs, grads, s2)
    assert all(_same_bits(a.cpu(), b.cpu()) for a, b in zip(ours + s1["m"] + s1["v"], theirs + s2["m"] + s2["v"]))

"""The Neumann series without a graph (runtime/solvers.py: its sums and differences into buffers of its
own) equals the out-of-place arithmetic bit for bit, leaves v and the products it is given untouched, and
stays differentiable when a graph is recorded."""
import pytest
import torch

from mptc.runtime.solvers import _norm, neumann


def _reference(matvec, v, terms, scale):
    c, p = list(v), list(v)
    for _ in range(terms):
        hc = matvec(c)
        c = [ci - scale * hi for ci, hi in zip(c, hc)]
        p = [pi + ci for pi, ci in zip(p, c)]
    vnorm = float(_norm(v))
    return [scale * pi for pi in p], {"iters": terms, "residual": float(_norm(c)) / vnorm if vnorm else 0.0}


def _bits(t):
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


@pytest.mark.parametrize("terms", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_neumann_equals_the_out_of_place_series_bit_for_bit(terms, dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 200), (7,), (500, 256)]
    A = [torch.rand(s, generator=g, dtype=dtype) for s in shapes]
    v = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    kept = [t.clone() for t in v]
    seen = []

    def matvec(u):                                      # a diagonal H; the identity's block returns u itself
        out = [a * ui for a, ui in zip(A[:-1], u[:-1])] + [u[-1]]
        seen.append([t.clone() for t in out])
        return out
    ours, info = neumann(matvec, v, terms=terms, scale=0.3)
    theirs, ref_info = _reference(lambda u: [a * ui for a, ui in zip(A[:-1], u[:-1])] + [u[-1]], v, terms, 0.3)
    assert info == ref_info
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(ours, theirs))
    assert all(torch.equal(a, b) for a, b in zip(v, kept))                  # v untouched
    if terms == 0:
        assert all(a is not b for a, b in zip(ours, v))


def test_neumann_stays_differentiable_when_a_graph_is_recorded():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    v = [torch.tensor([1.0, -1.0], dtype=torch.float64)]
    p, _ = neumann(lambda u: [A @ u[0]], v, terms=4, scale=0.2)
    (d,) = torch.autograd.grad(p[0].sum(), A)
    assert p[0].requires_grad and torch.isfinite(d).all()

"""Tests of mptc.runtime.datasets: determinism, shapes, balance, splits, info, and the planted structure."""
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mptc.runtime.datasets import Dataset, latents, split, synthetic_multitask, synthetic_multitask_ft

SIZES = dict(examples=2000, dim=32, tasks=40, related=8, adversarial=4, factors=6)


@pytest.fixture(scope="module")
def pt():
    return synthetic_multitask(**SIZES, seed=3)


@pytest.fixture(scope="module")
def ft(pt):
    return synthetic_multitask_ft(of=pt, examples=2000, tasks=5, seed=3)


def same(a: Dataset, b: Dataset) -> bool:
    return all(torch.equal(a.splits[k][i], b.splits[k][i]) for k in a.splits for i in (0, 1))


def quadratic(z: torch.Tensor) -> np.ndarray:
    """``z`` with all pairwise products: the features the related family is linear in."""
    i, j = torch.triu_indices(z.shape[1], z.shape[1])
    return torch.cat([z, z[:, i] * z[:, j]], 1).numpy()


def held_out_auroc(features: np.ndarray, y: torch.Tensor) -> list[float]:
    """Per-task AUROC of a logistic fit on the first half, scored on the second half (chance: 0.5)."""
    n, out = len(features) // 2, []
    for t in range(y.shape[1]):
        fit = LogisticRegression(max_iter=1000).fit(features[:n], y[:n, t].numpy())
        out.append(roc_auc_score(y[n:, t].numpy(), fit.decision_function(features[n:])))
    return out


def test_shapes_and_dtypes(pt, ft):
    x, y = pt.splits["all"]
    assert set(pt.splits) == {"all"} and x.shape == (2000, 32) and y.shape == (2000, 40)
    assert x.dtype == y.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}
    assert ft.splits["all"][0].shape == (2000, 32) and ft.splits["all"][1].shape == (2000, 5)


def test_deterministic_by_seed():
    assert same(synthetic_multitask(**SIZES, seed=1), synthetic_multitask(**SIZES, seed=1))
    assert not same(synthetic_multitask(**SIZES, seed=1), synthetic_multitask(**SIZES, seed=2))


def test_ft_deterministic_by_seed(pt):
    one = synthetic_multitask_ft(of=pt, examples=100, tasks=3, seed=5)
    assert same(one, synthetic_multitask_ft(of=pt, examples=100, tasks=3, seed=5))
    assert not same(one, synthetic_multitask_ft(of=pt, examples=100, tasks=3, seed=6))


def test_global_rng_untouched():
    state = torch.get_rng_state()
    synthetic_multitask_ft(of=synthetic_multitask(**SIZES, seed=0), examples=50, tasks=2)
    assert torch.equal(state, torch.get_rng_state())


def test_label_balance(pt, ft):
    for ds in (pt, ft):
        rate = ds.splits["all"][1].mean(0)
        assert ((rate >= 0.1) & (rate <= 0.9)).all(), rate


def test_info(pt):
    info = pt.info
    assert len(info["relevant"]) == len(info["kind"]) == 40
    assert info["relevant"] == [k == "related" for k in info["kind"]]
    assert [info["kind"].count(k) for k in ("related", "unrelated", "adversarial")] == [8, 28, 4]
    assert info["relevant"] != sorted(info["relevant"], reverse=True)  # shuffled, not the first k
    json.dumps({k: v for k, v in info.items() if k != "generator"})


def test_latents_are_the_ones_behind_x(pt, ft):
    for ds in (pt, ft):
        z, x = latents(ds), ds.splits["all"][0]
        gap = x - ds.info["generator"].clean(z)
        assert z.shape == (2000, 6) and gap.std() == pytest.approx(ds.info["noise"], rel=0.05)
    assert not torch.allclose(latents(pt), latents(ft))  # FT draws fresh examples


def test_planted_structure(pt):
    z, (_, y) = latents(pt), pt.splits["all"]
    acc = np.array(held_out_auroc(quadratic(z[:, :3]), y))
    kind = np.array(pt.info["kind"])
    assert acc[kind == "related"].min() > 0.95
    assert acc[kind != "related"].max() < 0.6
    unrelated = np.array(held_out_auroc(z[:, 3:].numpy(), y))
    assert unrelated[kind == "unrelated"].min() > 0.95 and unrelated[kind != "unrelated"].max() < 0.6


def test_ft_depends_on_related_factors_only(ft):
    z, (_, y) = latents(ft), ft.splits["all"]
    assert min(held_out_auroc(quadratic(z[:, :3]), y)) > 0.95
    assert max(held_out_auroc(quadratic(z[:, 3:]), y)) < 0.6


def test_ft_is_not_linear_in_z_rel(ft):
    z, (_, y) = latents(ft), ft.splits["all"]
    linear, quad = held_out_auroc(z[:, :3].numpy(), y), held_out_auroc(quadratic(z[:, :3]), y)
    assert np.mean(quad) > np.mean(linear) + 0.05


def test_bad_sizes():
    with pytest.raises(ValueError):
        synthetic_multitask(examples=10, dim=4, tasks=5, related=4, adversarial=2)
    with pytest.raises(ValueError):
        synthetic_multitask(examples=10, dim=4, tasks=5, related=2, factors=3, related_factors=3)


def indexed(n: int) -> Dataset:
    return Dataset({"all": (torch.arange(n).float()[:, None], torch.zeros(n, 1))}, {})


def test_split_disjoint_and_sized():
    out = split(indexed(1000), {"train": 0.2, "val": 0.3, "test": 0.5}, seed=4)
    ids = {k: set(v[0][:, 0].long().tolist()) for k, v in out.splits.items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 200, "val": 300, "test": 500}
    assert set.union(*ids.values()) == set(range(1000)) and sum(map(len, ids.values())) == 1000


def test_split_deterministic_and_rows_aligned(pt):
    a, b = split(pt, {"train": 0.5, "test": 0.5}, seed=1), split(pt, {"train": 0.5, "test": 0.5}, seed=1)
    assert same(a, b) and not same(a, split(pt, {"train": 0.5, "test": 0.5}, seed=2))
    x, y = pt.splits["all"]
    row = (x == a.splits["test"][0][0]).all(1).nonzero()[0, 0]
    assert torch.equal(y[row], a.splits["test"][1][0])


def test_split_rounding_keeps_total():
    out = split(indexed(10), {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, seed=0)
    assert sorted(len(v[0]) for v in out.splits.values()) == [3, 3, 4]


@pytest.mark.parametrize("fractions", [{"a": 0.5, "b": 0.4}, {"a": 1.2, "b": -0.2}, {},
                                       {"a": 0.98, "b": 0.01, "c": 0.01}, {"a": 0.5, "b": 0.5 + 1e-5}])
def test_split_bad_fractions(fractions):
    with pytest.raises(ValueError):
        split(indexed(10), fractions, seed=0)


def test_split_tolerates_rounding_error():
    assert len(split(indexed(10), {"a": 0.7, "b": 0.3 + 5e-7}, seed=0).splits) == 2

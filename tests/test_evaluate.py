"""Tests of mptc.runtime.evaluate: metrics, summarize and the fine-tuning protocol."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mptc.runtime.evaluate import METRICS, accuracy, auroc, finetune_evaluate, summarize


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["seeds"] == 4 and s["mean"] == pytest.approx(2.5)
    assert s["stderr"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2, abs=1e-6)  # 0.645497
    assert summarize([0.7]) == {"mean": 0.7, "stderr": 0.0, "seeds": 1}
    with pytest.raises(ValueError):
        summarize([])


def test_auroc_by_hand():
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    # pairs (pos, neg): (0.35 > 0.1) yes, (0.35 > 0.4) no, 0.8 beats both: 3 of 4
    assert auroc(y, torch.tensor([[0.1], [0.4], [0.35], [0.8]])) == pytest.approx(0.75)
    assert auroc(y, torch.tensor([[0.1], [0.4], [0.4], [0.8]])) == pytest.approx(0.875)  # tie = 1/2


def test_auroc_macro_skips_single_class_tasks():
    y = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    s = torch.tensor([[0.1, 0.0, 0.9], [0.9, 0.0, 0.2], [0.2, 0.0, 0.1], [0.8, 0.0, 0.8]])
    assert auroc(y, s) == pytest.approx((1.0 + 0.5) / 2)  # column 1 (all positive) skipped
    assert math.isnan(auroc(torch.ones(3, 2), torch.rand(3, 2)))


def test_auroc_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(300, 4, generator=gen) < 0.3).float()
    s = torch.randint(0, 20, (300, 4), generator=gen).float() + y  # many ties
    want = np.mean([roc_auc_score(y[:, t].numpy(), s[:, t].numpy()) for t in range(4)])
    assert auroc(y, s) == pytest.approx(want, abs=1e-12)


def test_accuracy_and_registry():
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert accuracy(y, torch.tensor([[-1.0, 2.0], [-0.5, 3.0]])) == pytest.approx(0.75)
    assert METRICS["auroc"] is auroc and METRICS["accuracy"] is accuracy


def make_data(seed: int = 0, n: int = 600, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    y = torch.stack([x[:, 0] + x[:, 1] > 0, x[:, 2] * x[:, 3] > 0], 1).float()
    cut = [0, n // 3, 2 * n // 3, n]
    return {k: (x[a:b], y[a:b]) for k, a, b in zip(("train", "val", "test"), cut, cut[1:])}


def make_encoder(seed: int = 0, dim: int = 6) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("mode", ["full", "linear"])
@pytest.mark.parametrize("metric", ["auroc", "accuracy"])
def test_returns_a_metric_in_unit_interval(mode, metric):
    value = finetune_evaluate(make_encoder(), make_data(), epochs=10, mode=mode, metric=metric)
    assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_learns_something():
    assert finetune_evaluate(make_encoder(), make_data(), epochs=60, lr=1e-2) > 0.8


def test_deterministic_given_seed():
    enc, data = make_encoder(), make_data()
    a = finetune_evaluate(enc, data, epochs=15, seed=1)
    assert a == finetune_evaluate(enc, data, epochs=15, seed=1)
    assert a != finetune_evaluate(enc, data, epochs=15, seed=2)


def test_leaves_encoder_and_global_rng_untouched():
    enc = make_encoder()
    before, rng = {k: v.clone() for k, v in enc.state_dict().items()}, torch.get_rng_state()
    finetune_evaluate(enc, make_data(), epochs=5, lr=1e-1)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert torch.equal(rng, torch.get_rng_state())


class Recording(torch.nn.Module):
    """An encoder whose copies register themselves when they run, so tests can inspect them."""

    seen: list = []

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 4)

    def forward(self, x):
        Recording.seen.append(self)
        return torch.relu(self.layer(x))


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_linear_mode_freezes_the_encoder_copy(mode):
    Recording.seen.clear()
    torch.manual_seed(0)
    enc = Recording()
    finetune_evaluate(enc, make_data(), epochs=5, lr=1e-1, mode=mode)
    copies = {id(m): m for m in Recording.seen if m is not enc}
    assert len(copies) == 1 and not any(m is enc for m in Recording.seen)
    copy = next(iter(copies.values()))
    moved = not torch.equal(copy.layer.weight, enc.layer.weight)
    assert moved == (mode == "full")
    assert all(p.requires_grad == (mode == "full") for p in copy.parameters())


def test_keeps_the_best_state():
    # With val == test the result is the best val score so far, so it can only grow with the epochs
    # (same seed, same trajectory), even when a large lr makes later epochs worse.
    data = make_data()
    data["val"] = data["test"]
    scores = [finetune_evaluate(make_encoder(), data, epochs=e, lr=0.3, patience=100) for e in range(1, 9)]
    assert scores == sorted(scores) and scores[-1] > scores[0]


def test_early_stopping_stops():
    data = make_data()
    data["val"] = (data["val"][0], torch.zeros_like(data["val"][1]))  # val auroc nan: never improves
    calls = []
    enc = make_encoder()
    enc.register_forward_hook(lambda *a: calls.append(1))  # deep-copied along with the encoder
    finetune_evaluate(enc, data, epochs=200, patience=3, batch=1000)
    # one width probe, then (train + val) per epoch for 1 + patience epochs, then test; not 401
    assert len(calls) == 1 + 2 * 4 + 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        finetune_evaluate(make_encoder(), make_data(), metric="f1")
    with pytest.raises(ValueError):
        finetune_evaluate(make_encoder(), make_data(), mode="partial")
    data = make_data()
    del data["val"]
    with pytest.raises(ValueError):
        finetune_evaluate(make_encoder(), data)


def test_labels_the_split_cannot_give_are_refused_before_meta_training(tmp_path, capsys):
    """finetune(labels: ...) beyond the FT train split is found with the data, not after the whole run: with
    checkpoints on, a run stopped after meta-training would leave a resumable folder behind."""
    from mptc.cli import main
    from tests.conftest import tiny_spec
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec(meta_steps=3).replace("seeds: 2)", "seeds: 2, labels: [50, 500])")
                    .replace("log_every 2", "log_every 2 checkpoint_every 1"))
    assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "500 labelled examples asked, the FT train split has 96" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mpt"]          # nothing trained, nothing kept


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_a_train_split_of_one_example_is_fine_tuned(mode):
    """The head's width comes from the encoder's features on at most two examples: a one-example train split
    (a user's tiny labelled set) gets a head as wide as the features, not one shaped by a reshape to two rows."""
    x, y = make_data()["train"]
    data = {**make_data(), "train": (x[:1], y[:1])}
    value = finetune_evaluate(make_encoder(), data, epochs=2, mode=mode)
    assert 0.0 <= value <= 1.0

"""Tests of mptc.runtime.ecg: the PTB-XL loader on a miniature PTB-XL folder written with wfdb, and the
offline generator's shape, determinism and planted labels."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors
from mptc.runtime import ecg
from mptc.runtime.datasets import Dataset
from mptc.runtime.ecg import SUPERCLASSES, SYNTHETIC_CLASSES, ecg_synthetic, ptbxl, synthetic_labels
from mptc.components.registry import DATASETS

PTBXL_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]  # as in its headers
STATEMENTS = pd.DataFrame({
    "description": ["normal ECG", "inferior MI", "non-diagnostic T", "left anterior fascicular block",
                    "left ventricular hypertrophy", "sinus rhythm", "premature ventricular complex"],
    "diagnostic": [1, 1, 1, 1, 1, None, None],
    "rhythm": [None, None, None, None, None, 1, None],
    "diagnostic_class": ["NORM", "MI", "STTC", "CD", "HYP", None, None],
}, index=pd.Index(["NORM", "IMI", "NDT", "LAFB", "LVH", "SR", "PVC"]))
# ecg_id -> (scp_codes, strat_fold, superclasses)
RECORDS = {
    1: ({"NORM": 100.0, "SR": 0.0}, 1, {"NORM"}),
    2: ({"IMI": 50.0, "LAFB": 100.0}, 3, {"MI", "CD"}),
    3: ({"NDT": 100.0, "LVH": 0.0, "SR": 0.0}, 8, {"STTC", "HYP"}),
    4: ({"SR": 0.0, "PVC": 100.0}, 2, set()),  # no diagnostic code: dropped by default
    5: ({"IMI": 15.0}, 9, {"MI"}),
    6: ({"NORM": 80.0, "LVH": 35.0}, 10, {"NORM", "HYP"}),
}


def signal(ecg_id: int) -> np.ndarray:
    """The ``[1000, 12]`` signal (mV) written for a record: a distinct sine per lead and record."""
    t = np.arange(1000) / 100
    return np.stack([0.1 * ecg_id * np.sin(2 * np.pi * (lead + 1) * t / 7) for lead in range(12)], 1)


def write_ptbxl(root, records=RECORDS, reversed_leads=(3,), fs=100, nan_in=()):
    """A PTB-XL-shaped folder: the two csv tables and records100/00000/000NN_lr.{hea,dat}."""
    rows = []
    for ecg_id, (codes, fold, _) in records.items():
        name = f"{ecg_id:05d}_lr"
        folder = root / "records100" / "00000"
        folder.mkdir(parents=True, exist_ok=True)
        names, sig = PTBXL_NAMES, signal(ecg_id)
        if ecg_id in nan_in:
            sig = sig.copy()
            sig[10, 2] = np.nan
        if ecg_id in reversed_leads:  # the loader must reorder by lead name
            names, sig = names[::-1], sig[:, ::-1]
        wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(names), p_signal=np.ascontiguousarray(sig),
                    fmt=["16"] * 12, write_dir=str(folder))
        rows.append({"ecg_id": ecg_id, "patient_id": 100 + ecg_id, "scp_codes": repr(codes), "strat_fold": fold,
                     "filename_lr": f"records100/00000/{name}", "filename_hr": f"records500/00000/{ecg_id:05d}_hr"})
    pd.DataFrame(rows).set_index("ecg_id").to_csv(root / "ptbxl_database.csv")
    STATEMENTS.to_csv(root / "scp_statements.csv")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_ptbxl(tmp_path_factory.mktemp("ptbxl"))


def expected_y(ecg_id: int) -> list[float]:
    return [float(c in RECORDS[ecg_id][2]) for c in SUPERCLASSES]


# ---- PTB-XL ------------------------------------------------------------------------------------------
def test_ptbxl_folds_labels_and_signals(root):
    ds = ptbxl(root)
    assert isinstance(ds, Dataset) and set(ds.splits) == {"train", "val", "test"}
    assert ds.info["ecg_id"] == {"train": [1, 2, 3], "val": [5], "test": [6]}  # 4 has no superclass
    for split, ids in ds.info["ecg_id"].items():
        x, y = ds.splits[split]
        assert x.dtype == y.dtype == torch.float32 and x.shape == (len(ids), 12, 1000)
        assert y.tolist() == [expected_y(i) for i in ids]
        for row, i in enumerate(ids):  # 16-bit storage: equal to the written signal up to quantisation
            np.testing.assert_allclose(x[row].numpy(), signal(i).T, atol=1e-3)
    assert ds.info["classes"] == ("NORM", "MI", "STTC", "CD", "HYP")


def test_ptbxl_options(root):
    kept = ptbxl(root, keep_unlabelled=True)
    assert kept.info["ecg_id"]["train"] == [1, 2, 3, 4] and kept.splits["train"][1][3].sum() == 0
    strict = ptbxl(root, min_likelihood=40.0, keep_unlabelled=True)  # IMI 15 and LVH 0/35 fall away
    assert strict.splits["val"][1].tolist() == [[0.0] * 5]
    assert strict.splits["test"][1].tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    custom = ptbxl(root, train_folds=[1, 9], val_folds=[3], test_folds=[8, 10])
    assert custom.info["ecg_id"] == {"train": [1, 5], "val": [2], "test": [3, 6]}
    x = ptbxl(root, standardize=True).splits["train"][0]
    np.testing.assert_allclose(x.mean(dim=(0, 2)).numpy(), 0, atol=1e-5)


def test_superclass_mapping_uses_diagnostic_rows_only():
    mapping = ecg.superclass_map(STATEMENTS)
    assert mapping == {"NORM": "NORM", "IMI": "MI", "NDT": "STTC", "LAFB": "CD", "LVH": "HYP"}
    assert ecg.superclass_labels({"SR": 0.0, "PVC": 100.0}, mapping).tolist() == [0.0] * 5


def one_line(e: Exception) -> str:
    message = str(e)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("breakage, error, message", [
    (lambda r: r / "nope", OSError, "PTB-XL folder '{r}/nope' does not exist"),
    (lambda r: (r / "ptbxl_database.csv").unlink() or r, OSError, "has no ptbxl_database.csv"),
    (lambda r: (r / "scp_statements.csv").write_text("code,description\nNORM,normal\n") and r, ValueError,
     "scp_statements.csv lacks the columns diagnostic, diagnostic_class"),
    (lambda r: (r / "records100/00000/00005_lr.hea").unlink() or r, OSError,
     "PTB-XL record records100/00000/00005_lr is missing"),
])
def test_ptbxl_errors(tmp_path, breakage, error, message):
    r = write_ptbxl(tmp_path, {k: RECORDS[k] for k in (1, 5, 6)})
    with pytest.raises(error) as info:
        ptbxl(breakage(r))
    assert message.format(r=tmp_path) in one_line(info.value)


def test_ptbxl_bad_values(tmp_path):
    r = write_ptbxl(tmp_path, {k: RECORDS[k] for k in (1, 5, 6)})
    with pytest.raises(ValueError, match="sampling_rate 100 or 500, not 250"):
        ptbxl(r, sampling_rate=250)
    with pytest.raises(ValueError, match="fold 9 is in both train_folds and val_folds"):
        ptbxl(r, train_folds=[1, 9])
    with pytest.raises(ValueError, match="split 'train' is empty"):
        ptbxl(r, train_folds=[4])
    db = pd.read_csv(r / "ptbxl_database.csv", index_col=0)
    db.loc[5, "scp_codes"] = "{'IMI': 15.0"
    db.to_csv(r / "ptbxl_database.csv")
    with pytest.raises(ValueError, match="record 5 has malformed scp_codes"):
        ptbxl(r)


def _database_cell(r, ecg_id, column, value):
    db = pd.read_csv(r / "ptbxl_database.csv", index_col=0)
    db[column] = db[column].astype(object)
    db.loc[ecg_id, column] = value
    db.to_csv(r / "ptbxl_database.csv")
    return r


@pytest.mark.parametrize("write, message", [
    (lambda r: write_ptbxl(r, {k: RECORDS[k] for k in (1, 5, 6)}, fs=250),
     "PTB-XL record records100/00000/00001_lr is sampled at 250 Hz, not the 100 Hz asked for"),
    (lambda r: write_ptbxl(r, {k: RECORDS[k] for k in (1, 5, 6)}, nan_in=(5,)),
     "PTB-XL record records100/00000/00005_lr has 1 NaN or infinite samples"),
    (lambda r: _database_cell(write_ptbxl(r, {k: RECORDS[k] for k in (1, 5, 6)}), 5, "scp_codes", "{'NORM': 'high'}"),
     "ptbxl_database.csv: record 5 has scp_codes \"{'NORM': 'high'}\": a likelihood must be a number, got 'high'"),
    (lambda r: _database_cell(write_ptbxl(r, {k: RECORDS[k] for k in (1, 5, 6)}), 6, "strat_fold", "abc"),
     "ptbxl_database.csv: record 6 (data row 3) has strat_fold 'abc', not a fold number"),
], ids=["record-rate", "nan-sample", "likelihood-word", "fold-word"])
def test_ptbxl_records_and_cells_it_cannot_use_are_named(tmp_path, write, message):
    """Each was read as it came (a 250 Hz record as 100 Hz, a NaN into the loss) or named nothing."""
    with pytest.raises(ValueError) as info:
        ptbxl(write(tmp_path))
    assert message in one_line(info.value)


def test_ptbxl_rate_is_checked_at_its_argument():
    from mptc.compiler.lower import compile_spec
    from mptc.errors import SpecErrors
    with pytest.raises(SpecErrors) as info:
        compile_spec(f'data ft = ecg.ptbxl(root: "{Path(__file__).parent}", sampling_rate: 250)\n', "s.mpt")
    assert any("PTB-XL comes at sampling_rate 100 (records100) or 500 (records500), not 250" in e.message
               for e in info.value.errors)


# ---- the generator -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    return ecg_synthetic(examples=600, seed=3, pool=2)


def test_synthetic_shape_and_info(synthetic):
    x, y = synthetic.splits["all"]
    assert x.shape == (600, 12, 1000) and y.shape == (600, 5) and x.dtype == y.dtype == torch.float32
    assert torch.isfinite(x).all() and set(y.unique().tolist()) == {0.0, 1.0}
    assert synthetic.info["classes"] == SYNTHETIC_CLASSES and synthetic.info["sampling_rate"] == 100
    assert all(len(v) == 600 for v in synthetic.info["planted"].values())
    assert ((y.mean(0) > 0.4) & (y.mean(0) < 0.6)).all()  # thresholds at the medians


def test_synthetic_is_deterministic(synthetic):
    pool = ecg._pool(3, 2)
    ecg._pool.cache_clear()  # neurokit2 simulates the same pool again from the seed
    assert np.array_equal(ecg._pool(3, 2), pool)
    again = ecg_synthetic(examples=600, seed=3, pool=2)
    assert all(torch.equal(a, b) for a, b in zip(synthetic.splits["all"], again.splits["all"]))
    rates = [ecg._planted(9, ecg._rng(seed, 1))["heart_rate"] for seed in (3, 4)]
    assert not np.array_equal(*rates)


def test_synthetic_labels_are_the_planted_functions(synthetic):
    planted = {k: np.array(v) for k, v in synthetic.info["planted"].items()}
    assert np.array_equal(synthetic_labels(planted), synthetic.splits["all"][1].numpy())
    hr, t = planted["heart_rate"], synthetic.info["thresholds"]
    assert np.array_equal(synthetic.splits["all"][1][:, 0].numpy(), (hr > t["heart_rate"]).astype(np.float32))


def test_synthetic_labels_are_learnable_from_the_signal(synthetic):
    """Simple per-lead statistics + a logistic fit recover every label on held-out examples."""
    x, y = (t.numpy() for t in synthetic.splits["all"])
    features = np.concatenate([x.mean(-1), x.std(-1), np.abs(np.diff(x, axis=-1)).mean(-1),
                               np.percentile(x, 90, axis=-1)], 1)
    features = StandardScaler().fit_transform(features)
    n = len(x) // 2
    for task, name in enumerate(SYNTHETIC_CLASSES):
        fit = LogisticRegression(max_iter=2000).fit(features[:n], y[:n, task])
        assert roc_auc_score(y[n:, task], fit.decision_function(features[n:])) > 0.9, name


def test_synthetic_heart_rate_is_in_the_signal(synthetic):
    """The R-R spacing of lead I (its autocorrelation peak) follows the planted heart rate."""
    lead = synthetic.splits["all"][0][:200, 0].numpy()
    lead = lead - lead.mean(1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(lead, n=4096)) ** 2
    auto = np.fft.irfft(spectrum)[:, :200]
    lags = np.arange(35, 125)  # 48-171 bpm
    measured = 6000 / lags[auto[:, lags].argmax(1)]
    planted = np.array(synthetic.info["planted"]["heart_rate"][:200])
    assert np.median(np.abs(measured - planted)) < 3


def test_synthetic_bad_sizes():
    with pytest.raises(ValueError, match="pool must be an even number"):
        ecg_synthetic(examples=4, pool=3)
    with pytest.raises(ValueError, match="examples must be positive"):
        ecg_synthetic(examples=0)


# ---- the catalog -------------------------------------------------------------------------------------
SPEC = """\
data pt = ecg.synthetic(examples: 64, seed: 1)
data ft = ecg.ptbxl(root: "{root}")
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 5)
head ft_head = linear(out: 5)
pretrain {{
  data pt batch 16
  loss mean(bce(pt_head(encoder(x)), y))
}}
finetune {{
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
"""


def test_catalog_declares_shapes_and_checks_the_root(root, tmp_path):
    with pytest.raises(SpecErrors) as info:  # an MLP cannot take [batch, 12, 1000] signals
        compile_spec(SPEC.format(root=root), "s.mpt")
    assert any("[batch, 12, 1000]" in e.message for e in info.value.errors)
    with pytest.raises(SpecErrors) as info:
        compile_spec(SPEC.format(root=tmp_path / "absent"), "s.mpt")
    missing = [e for e in info.value.errors if "no such file or folder" in e.message]
    assert len(missing) == 1 and (missing[0].span.line, missing[0].span.col) == (2, 27)  # the string
    assert DATASETS.get("ecg.ptbxl").shape({"sampling_rate": 500}, None) == {
        "x": ("B", 12, 5000), "y": ("B", 5), "splits": ("train", "val", "test")}


# ---- specs/paper/ecg_simclr.mpt, shrunken, end to end ---------------------------------------------------
def test_ecg_simclr_spec_runs_and_writes_the_label_table(tmp_path):
    import json
    from pathlib import Path
    from mptc.cli import main
    text = (Path(__file__).parent.parent / "specs" / "paper" / "ecg_simclr.mpt").read_text()
    assert "ift(neumann(terms: 5, scale: auto))" in text
    spec = tmp_path / "ecg_simclr.mpt"
    spec.write_text(text.replace("ift(neumann(terms: 5, scale: auto))", "ift(neumann(terms: 1))"))
    shrink = ["data.pt.examples=32", "data.pt.pool=2", "data.pt.seed=3", "data.ft.examples=60", "data.ft.pool=2",
              "data.ft.seed=3", "train.meta_steps=2", "train.warmup=1", "pretrain.steps=1",
              "pretrain.data.batch=16", "finetune.data.batch=16", "evaluate.labels=[10, 20]", "evaluate.seeds=2",
              "evaluate.epochs=2"]
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet", *[a for s in shrink for a in ("--set", s)]]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["auroc_by_labels"]) == {"10", "20"}
    for n in ("10", "20"):
        assert set(ev["auroc_by_labels"][n]) == {"meta", "pretrain", "no_pretrain"}
        assert ev["auroc_by_labels"][n]["meta"]["seeds"] == 2
    assert ev["meta"]["mean"] == ev["auroc_by_labels"]["10"]["meta"]["mean"]     # the first size is the headline
    assert "s.0.weight" in __import__("torch").load(out / "checkpoint.pt")["metas"]


def test_fine_tuning_on_more_labels_than_the_split_has_is_a_named_error():
    from mptc.errors import RunError
    from mptc.runtime.evaluate import labelled
    x, y = torch.zeros(5, 2), torch.zeros(5, 1)
    assert labelled({"train": (x, y)}, 3, seed=0)["train"][0].shape == (3, 2)
    with pytest.raises(RunError, match="6 labelled examples asked, the FT train split has 5"):
        labelled({"train": (x, y)}, 6, seed=0)

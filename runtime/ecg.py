"""12-lead ECG data: the PTB-XL loader and an offline generator in PTB-XL's shape.

Both return :class:`mptc.runtime.datasets.Dataset` with ``x [N, 12, T]`` float32 (channels first, for
1-D CNNs; leads in the order of :data:`LEADS`) and multi-label ``y [N, 5]`` float32 0/1.

**PTB-XL** (:func:`ptbxl`; Wagner et al. 2020, physionet.org/content/ptb-xl). ``root`` is the unpacked
folder holding ``ptbxl_database.csv``, ``scp_statements.csv`` and ``records100/`` (``records500/`` for
``sampling_rate=500``). Each record's ``scp_codes`` (a dict ``{code: likelihood}`` written as a string)
maps to the 5 diagnostic superclasses :data:`SUPERCLASSES` through ``scp_statements.csv``'s
``diagnostic_class`` column, rows with ``diagnostic == 1`` only (the PhysioNet example code). Records
without any superclass are dropped unless ``keep_unlabelled`` (as in Strodthoff et al. 2021's
benchmark). Splits follow the recommended stratified folds: ``strat_fold`` 1-8 train, 9 val, 10 test.

**The generator** (:func:`ecg_synthetic`) makes 10 s at 100 Hz (``x [N, 12, 1000]``) without any
download. neurokit2's ECGSYN model is too slow to run per example (about 0.3 s per 6 s 12-lead record),
so a small pool of base records is simulated once per ``(seed, pool)`` and cached; each example is
then assembled beat by beat from the pool's beats. The planted mechanism, all randomness from numpy
``Generator`` streams derived from ``seed``:

* **Pool.** ``pool`` records, ``nk.ecg_simulate(method="multileads", sampling_rate=100,
  heart_rate=60)``, each with its own P and T amplitudes (ECGSYN ``ai`` scaled by U[0.6, 1.4]) and
  extremum angles (``ti`` + U[-5, 5] degrees). The second half of the pool has QRS Gaussians twice as
  wide (ECGSYN ``bi`` of Q, R, S x 2). Beats are cut at the R peaks of lead I, from 0.3 s before to
  0.55 s after, baseline-detrended and tapered.
* **Per example** (independent draws): ``heart_rate ~ U[50, 130]`` bpm sets the RR interval (each RR
  jittered by 3%); ``wide_qrs ~ Bernoulli(1/2)`` picks the half of the pool the beats come from (a
  random pool beat per heartbeat); ``st_anterior ~ U[-0.1, 0.3]`` adds a smooth ST-segment plateau
  (0.05-0.4 s after each R) to V1-V4; ``st_lateral ~ U[-0.3, 0.1]`` adds one to I, aVL, V5, V6;
  ``voltage ~ exp(U[log 0.5, log 2])`` scales V1-V6; every lead gets a gain U[0.9, 1.1]; then
  baseline wander (0.1-0.5 Hz) and Gaussian noise with standard deviation ``noise * U[0.5, 1.5]``.
* **Labels**, deterministic functions of the planted variables (thresholds at the medians, so each
  label is positive for half of the examples, independently of the others), in the order of
  :data:`SYNTHETIC_CLASSES`: ``tachycardia = heart_rate > 90``, ``st_elevation = st_anterior > 0.1``,
  ``st_depression = st_lateral < -0.1``, ``high_voltage = voltage > 1``, ``wide_qrs``.
  ``info["planted"]`` records every variable per example, ``info["thresholds"]`` the thresholds.

    >>> ds = ecg_synthetic(examples=64, seed=0, pool=2)
    >>> x, y = ds.splits["all"]
    >>> tuple(x.shape), tuple(y.shape), ds.info["classes"][0]
    ((64, 12, 1000), (64, 5), 'tachycardia')
"""
from __future__ import annotations

import ast
import functools
import math
from pathlib import Path

import numpy as np
import torch

from mptc.runtime.datasets import Dataset

__all__ = ["LEADS", "SUPERCLASSES", "SYNTHETIC_CLASSES", "THRESHOLDS", "ecg_synthetic", "ptbxl", "superclass_labels",
           "superclass_map", "synthetic_labels"]

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
SYNTHETIC_CLASSES = ("tachycardia", "st_elevation", "st_depression", "high_voltage", "wide_qrs")
THRESHOLDS = {"heart_rate": 90.0, "st_anterior": 0.1, "st_lateral": -0.1, "voltage": 1.0}
_DEFAULT_FOLDS = {"train": (1, 2, 3, 4, 5, 6, 7, 8), "val": (9,), "test": (10,)}
_DATABASE, _STATEMENTS = "ptbxl_database.csv", "scp_statements.csv"
_NEEDED = {_DATABASE: ("scp_codes", "strat_fold", "filename_lr", "filename_hr"),
           _STATEMENTS: ("diagnostic", "diagnostic_class")}


# ---- PTB-XL -------------------------------------------------------------------------------------------
def _table(root: Path, name: str):
    """One of PTB-XL's csv tables, indexed by its first column; OSError/ValueError in one line."""
    import pandas as pd

    path = root / name
    if not path.is_file():
        raise OSError(f"PTB-XL folder '{root}' has no {name} (is it the unpacked ptb-xl folder?)")
    try:
        table = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in _NEEDED[name] if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}")
    return table


def superclass_map(statements) -> dict[str, str]:
    """scp code -> diagnostic superclass, from the rows of ``scp_statements.csv`` with ``diagnostic == 1``.

        >>> import pandas as pd
        >>> t = pd.DataFrame({"diagnostic": [1, None, 1], "diagnostic_class": ["MI", None, "NORM"]},
        ...                  index=["IMI", "SR", "NORM"])
        >>> superclass_map(t)
        {'IMI': 'MI', 'NORM': 'NORM'}
    """
    rows = statements[statements["diagnostic"] == 1]
    return {str(code): str(cls) for code, cls in rows["diagnostic_class"].items() if cls in SUPERCLASSES}


def _codes(text, ecg_id) -> dict:
    """A record's ``scp_codes`` cell, e.g. ``"{'NORM': 100.0, 'SR': 0.0}"``, as a dict."""
    try:
        codes = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError):
        codes = None
    if not isinstance(codes, dict):
        raise ValueError(f"ptbxl_database.csv: record {ecg_id} has malformed scp_codes {text!r}")
    return codes


def superclass_labels(codes: dict, mapping: dict[str, str], min_likelihood: float = 0.0) -> np.ndarray:
    """The 0/1 superclass vector (order :data:`SUPERCLASSES`) of one record's ``{code: likelihood}``.

        >>> superclass_labels({"IMI": 50.0, "SR": 0.0}, {"IMI": "MI", "NORM": "NORM"}).tolist()
        [0.0, 1.0, 0.0, 0.0, 0.0]
    """
    found = {mapping[c] for c, lik in codes.items() if c in mapping and _likelihood(lik) >= min_likelihood}
    return np.array([c in found for c in SUPERCLASSES], dtype=np.float32)


def _likelihood(value) -> float:
    """A code's likelihood as a number (ValueError, which `_labels` names with the record, otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a likelihood must be a number, got {value!r}")
    return float(value)


def _labels(db, mapping: dict[str, str], min_likelihood: float) -> np.ndarray:
    """``[N, 5]`` superclass labels of every row of ``ptbxl_database.csv``."""
    rows = []
    for ecg_id, text in db["scp_codes"].items():
        codes = _codes(text, ecg_id)                     # its own error names the record
        try:
            rows.append(superclass_labels(codes, mapping, min_likelihood))
        except ValueError as e:
            raise ValueError(f"{_DATABASE}: record {ecg_id} has scp_codes {text!r}: {e}") from None
    return np.stack(rows) if rows else np.zeros((0, len(SUPERCLASSES)), np.float32)


def _fold_of(folds: dict, strat_fold: np.ndarray) -> dict[str, np.ndarray]:
    """Split name -> row mask for the given ``{split: folds}``; ValueError when folds overlap."""
    seen: dict[int, str] = {}
    for name, listed in folds.items():
        for f in listed:
            if f in seen:
                raise ValueError(f"fold {f} is in both {seen[f]}_folds and {name}_folds")
            seen[int(f)] = name
    return {name: np.isin(strat_fold, list(listed)) for name, listed in folds.items()}


def _strat_folds(db) -> np.ndarray:
    """The `strat_fold` column as integers; a cell that is not one is named with its record."""
    import pandas as pd
    folds = pd.to_numeric(db["strat_fold"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(folds) | (folds != np.round(folds))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{_DATABASE}: record {db.index[row]} (data row {row + 1}) has strat_fold "
                         f"{db['strat_fold'].iloc[row]!r}, not a fold number")
    return folds.astype(int)


def _filename(db, column: str, row: int) -> str:
    """The record file of one row of ``ptbxl_database.csv``; ValueError naming the record when its cell
    is empty (pandas reads an empty cell as NaN) or not a file name."""
    name = db[column].iloc[row]
    if not isinstance(name, str) or not name.strip():
        cell = repr(name) if isinstance(name, str) and name else "empty"
        raise ValueError(f"{_DATABASE}: record {db.index[row]} (data row {row + 1}) has no {column} "
                         f"(the cell is {cell})")
    return name.strip()


def _record(root: Path, filename: str, length: int, rate: int) -> np.ndarray:
    """One record as ``[12, length]`` float32 in mV, leads reordered to :data:`LEADS`."""
    import wfdb

    path = root / filename
    if not path.with_suffix(".hea").is_file():
        raise OSError(f"PTB-XL record {filename} is missing (no {path.with_suffix('.hea')})")
    try:
        signal, fields = wfdb.rdsamp(str(path))
    except Exception as e:  # wfdb raises assorted types on a damaged header or signal file
        raise ValueError(f"cannot read PTB-XL record {filename} (a damaged .hea or .dat file?): {e}") from None
    order = _lead_order(fields["sig_name"], filename)
    if fields.get("fs") is not None and float(fields["fs"]) != rate:
        raise ValueError(f"PTB-XL record {filename} is sampled at {fields['fs']:g} Hz, not the {rate} Hz asked for")
    if not np.isfinite(signal).all():
        raise ValueError(f"PTB-XL record {filename} has {int((~np.isfinite(signal)).sum())} NaN or infinite samples")
    if signal.shape[0] != length:
        raise ValueError(f"PTB-XL record {filename} has {signal.shape[0]} samples, expected {length}")
    return np.ascontiguousarray(signal[:, order].T, dtype=np.float32)


def _lead_order(names, filename: str) -> list[int]:
    """Column of each of :data:`LEADS` among a header's signal names (case-insensitive: PTB-XL says AVR)."""
    upper = [str(n).upper() for n in names]
    missing = [lead for lead in LEADS if lead.upper() not in upper]
    if missing:
        raise ValueError(f"PTB-XL record {filename} lacks lead{'s' * (len(missing) > 1)} {', '.join(missing)}")
    return [upper.index(lead.upper()) for lead in LEADS]


def ptbxl(root, sampling_rate: int = 100, train_folds=_DEFAULT_FOLDS["train"], val_folds=_DEFAULT_FOLDS["val"],
          test_folds=_DEFAULT_FOLDS["test"], min_likelihood: float = 0.0, keep_unlabelled: bool = False,
          standardize: bool = False) -> Dataset:
    """PTB-XL as splits train/val/test of ``(x [N, 12, 10 * sampling_rate], y [N, 5])``; see the module
    docstring. ``standardize`` scales each lead by the train split's mean and standard deviation.

        >>> ds = ptbxl("/data/ptb-xl/1.0.3")                     # doctest: +SKIP
        >>> ds.splits["train"][0].shape[1:], ds.info["classes"]  # doctest: +SKIP
        (torch.Size([12, 1000]), ('NORM', 'MI', 'STTC', 'CD', 'HYP'))
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise OSError(f"PTB-XL folder '{root}' does not exist" if not Path(root).exists() else
                      f"PTB-XL root '{root}' is a file: give the unpacked ptb-xl folder")
    if sampling_rate not in (100, 500):
        raise ValueError(f"PTB-XL comes at sampling_rate 100 or 500, not {sampling_rate}")
    db, mapping = _table(root, _DATABASE), superclass_map(_table(root, _STATEMENTS))
    y = _labels(db, mapping, min_likelihood)
    keep = np.ones(len(db), bool) if keep_unlabelled else y.any(1)
    column = "filename_lr" if sampling_rate == 100 else "filename_hr"
    masks = _fold_of({"train": train_folds, "val": val_folds, "test": test_folds}, _strat_folds(db))
    splits, ids = {}, {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask & keep)
        if len(rows) == 0:
            raise ValueError(f"PTB-XL split '{name}' is empty (no labelled records in its folds)")
        x = np.stack([_record(root, _filename(db, column, r), 10 * sampling_rate, sampling_rate) for r in rows])
        splits[name], ids[name] = (torch.from_numpy(x), torch.from_numpy(y[rows])), db.index[rows].tolist()
    if standardize:
        splits = _standardized(splits)
    info = {"classes": SUPERCLASSES, "leads": LEADS, "sampling_rate": sampling_rate, "ecg_id": ids,
            "folds": {n: list(f) for n, f in zip(masks, (train_folds, val_folds, test_folds))},
            "source": "ptbxl", "root": str(root)}
    return Dataset(splits, info)


def _standardized(splits: dict) -> dict:
    """Every split scaled per lead by the train split's mean and standard deviation."""
    x = splits["train"][0]
    mean, std = x.mean(dim=(0, 2), keepdim=True), x.std(dim=(0, 2), keepdim=True).clamp_min(1e-6)
    return {n: ((xs - mean) / std, ys) for n, (xs, ys) in splits.items()}


# ---- the offline generator ----------------------------------------------------------------------------
FS, SECONDS = 100, 10                       # PTB-XL's low-rate records: 10 s at 100 Hz
_PRE, _POST = 30, 55                        # a beat: 0.30 s before the R peak to 0.55 s after
_POOL_SECONDS = 6                           # R peaks near 1, 2, ..., 5 s at 60 bpm: 4-5 whole beats
_BEATS = 4                                  # beats kept per pool record
_ANTERIOR, _LATERAL, _PRECORDIAL = [6, 7, 8, 9], [0, 4, 10, 11], list(range(6, 12))
_ECGSYN = {"ti": np.array([-70.0, -15, 0, 15, 100]), "ai": np.array([1.2, -5, 30, -7.5, 0.75]),
           "bi": np.array([0.25, 0.1, 0.1, 0.1, 0.4])}  # neurokit2's ECGSYN defaults (P Q R S T)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent numpy stream for ``(seed, stream)``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, stream]))


def _morphology(wide: bool, rng: np.random.Generator) -> dict:
    """ECGSYN parameters of one pool record: jittered P/T amplitudes and angles, wide QRS or not."""
    ai = _ECGSYN["ai"] * np.array([rng.uniform(0.6, 1.4), 1, 1, 1, rng.uniform(0.6, 1.4)])
    ti = _ECGSYN["ti"] + rng.uniform(-5, 5, 5) * np.array([1, 0, 0, 0, 1])
    bi = _ECGSYN["bi"] * np.array([1, 2, 2, 2, 1] if wide else [1, 1, 1, 1, 1])
    return {"ti": ti, "ai": ai, "bi": bi}


def _r_peaks(lead_i: np.ndarray) -> np.ndarray:
    """Sample indices of the R peaks (lead I's R dominates its beat), whole beats only, after the
    simulator's start-up transient (its first second)."""
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(lead_i, distance=int(0.6 * FS), prominence=0.5 * np.ptp(lead_i))
    return peaks[(peaks >= FS - 10) & (peaks + _POST <= len(lead_i)) & (peaks >= _PRE)]


def _beats(record: np.ndarray) -> np.ndarray:
    """``[_BEATS, 12, L]`` beats of one ``[12, T]`` record: linear baseline removed, ends tapered."""
    from scipy.signal.windows import tukey

    peaks = _r_peaks(record[0])
    if len(peaks) < _BEATS:
        raise RuntimeError(f"the ECG simulator gave {len(peaks)} beats, expected {_BEATS}")
    out = np.stack([record[:, p - _PRE:p + _POST] for p in peaks[:_BEATS]])
    ramp = np.linspace(0, 1, _PRE + _POST)
    start, end = out[..., :3].mean(-1, keepdims=True), out[..., -3:].mean(-1, keepdims=True)
    return (out - (start + (end - start) * ramp)) * tukey(_PRE + _POST, 0.2)


@functools.lru_cache(maxsize=8)
def _pool(seed: int, size: int) -> np.ndarray:
    """``[size, _BEATS, 12, L]`` beats simulated by neurokit2 (cached: the slow part); the second half
    of the pool has wide QRS complexes."""
    import neurokit2 as nk

    rng, records = _rng(seed, 0), []
    for i in range(size):
        shape = _morphology(wide=i >= size // 2, rng=rng)
        sim = nk.ecg_simulate(duration=_POOL_SECONDS, sampling_rate=FS, noise=0, heart_rate=60,
                              method="multileads", random_state=rng, **shape)
        records.append(_beats(sim.to_numpy().T))
    beats = np.stack(records).astype(np.float32)
    beats.setflags(write=False)
    return beats


def _plateau() -> np.ndarray:
    """The ST-segment shape over a beat window: 0 before R+0.05 s, 1 over the segment, back to 0 by R+0.4 s."""
    from scipy.signal.windows import tukey

    out = np.zeros(_PRE + _POST, np.float32)
    lo, hi = _PRE + 5, _PRE + 40
    out[lo:hi] = tukey(hi - lo, 0.6)
    return out


def _planted(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The per-example variables the labels are functions of (module docstring)."""
    return {"heart_rate": rng.uniform(50, 130, n), "st_anterior": rng.uniform(-0.1, 0.3, n),
            "st_lateral": rng.uniform(-0.3, 0.1, n), "voltage": np.exp(rng.uniform(math.log(0.5), math.log(2), n)),
            "wide_qrs": rng.random(n) < 0.5}


def synthetic_labels(planted: dict) -> np.ndarray:
    """The ``[N, 5]`` labels (order :data:`SYNTHETIC_CLASSES`) as functions of the planted variables.

        >>> synthetic_labels({"heart_rate": np.array([120.0]), "st_anterior": np.array([0.0]),
        ...                   "st_lateral": np.array([-0.2]), "voltage": np.array([0.7]),
        ...                   "wide_qrs": np.array([True])}).tolist()
        [[1.0, 0.0, 1.0, 0.0, 1.0]]
    """
    t = THRESHOLDS
    cols = [planted["heart_rate"] > t["heart_rate"], planted["st_anterior"] > t["st_anterior"],
            planted["st_lateral"] < t["st_lateral"], planted["voltage"] > t["voltage"], planted["wide_qrs"]]
    return np.stack(cols, 1).astype(np.float32)


def _lead_gains(p: dict, rng: np.random.Generator) -> np.ndarray:
    """``[N, 12, 1]``: the precordial voltage times a U[0.9, 1.1] gain per lead."""
    gain = rng.uniform(0.9, 1.1, (len(p["voltage"]), 12))
    gain[:, _PRECORDIAL] *= p["voltage"][:, None]
    return gain[..., None].astype(np.float32)


def _st_offsets(p: dict) -> np.ndarray:
    """``[N, 12, L]``: the ST plateaus added to every beat (anterior and lateral leads)."""
    st = np.zeros((len(p["voltage"]), 12, 1), np.float32)
    st[:, _ANTERIOR, 0] = p["st_anterior"][:, None]
    st[:, _LATERAL, 0] = p["st_lateral"][:, None]
    return st * _plateau()


def _assemble(pool: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """``[N, 12, T]`` clean signals: pool beats placed at the planted heart rate, gains and ST applied."""
    n, half, length = len(p["voltage"]), len(pool) // 2, FS * SECONDS
    rr = FS * 60.0 / p["heart_rate"]                                   # samples between beats
    slots = int(math.ceil(length / rr.min())) + 3
    times = rng.uniform(-2, -1, n)[:, None] * rr[:, None] + np.cumsum(
        rr[:, None] * rng.normal(1, 0.03, (n, slots)), 1)            # R peaks; the first before t = 0
    record = rng.integers(0, half, n) + half * p["wide_qrs"]        # wide QRS: the pool's second half
    beat = rng.integers(0, pool.shape[1], (n, slots))
    gains, st = _lead_gains(p, rng), _st_offsets(p)
    canvas = np.zeros((n, 12, length + 2 * (_PRE + _POST)), np.float32)
    rows, window = np.arange(n)[:, None], np.arange(_PRE + _POST)
    for k in range(slots):
        # a beat wholly outside the 10 s is parked in the canvas margins, which are cropped off
        start = np.clip(np.round(times[:, k]).astype(int), -_POST, length + _PRE) + _POST
        canvas[rows, :, start[:, None] + window] += (pool[record, beat[:, k]] * gains + st).transpose(0, 2, 1)
    return canvas[:, :, _PRE + _POST:_PRE + _POST + length]


def _noise(shape, level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Baseline wander (0.1-0.5 Hz, per-lead amplitude up to 2 x level) plus Gaussian noise of sd ``level``."""
    n, leads, length = shape
    t = np.arange(length, dtype=np.float32) / FS
    freq, phase = rng.uniform(0.1, 0.5, (n, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1))
    level = level.astype(np.float32)[:, None, None]
    wave = np.sin((2 * np.pi * freq * t + phase).astype(np.float32))            # [n, 1, T]: float32 from here
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= level
    out += (2 * level * rng.random((n, leads, 1), dtype=np.float32)) * wave
    return out


def ecg_synthetic(examples: int, seed: int = 0, noise: float = 0.05, pool: int = 6) -> Dataset:
    """``examples`` synthetic 12-lead ECGs (split ``"all"``: ``x [N, 12, 1000]``, ``y [N, 5]``) with planted,
    learnable labels; see the module docstring. The first call per ``(seed, pool)`` simulates the pool
    (about 0.3 s per record); later calls reuse it.

        >>> ds = ecg_synthetic(examples=32, seed=1, pool=2)
        >>> sorted(ds.info["planted"]), ds.info["thresholds"]["heart_rate"]
        (['heart_rate', 'noise', 'st_anterior', 'st_lateral', 'voltage', 'wide_qrs'], 90.0)
    """
    if examples < 1:
        raise ValueError(f"examples must be positive, got {examples}")
    if pool < 2 or pool % 2:
        raise ValueError(f"pool must be an even number >= 2 (half narrow, half wide QRS), got {pool}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = _rng(seed, 1)
    planted = _planted(examples, rng)
    clean = _assemble(_pool(int(seed), int(pool)), planted, rng)
    planted["noise"] = noise * rng.uniform(0.5, 1.5, examples)
    x = clean + _noise(clean.shape, planted["noise"], rng)
    y = synthetic_labels(planted)
    info = {"classes": SYNTHETIC_CLASSES, "leads": LEADS, "sampling_rate": FS, "source": "synthetic",
            "planted": {k: v.tolist() for k, v in planted.items()}, "thresholds": dict(THRESHOLDS),
            "seed": seed, "examples": examples, "pool": pool, "noise": noise}
    return Dataset({"all": (torch.from_numpy(x), torch.from_numpy(y))}, info)

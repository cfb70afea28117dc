"""Writes the example's data files (committed; rerun to regenerate them: same values):

    data/pt.npz   features [1500, 16] float32, labels [1500, 30] uint8: 12 tasks on the 4 latent factors
                  the fine-tuning tasks use, 18 on unrelated noise
    data/ft.csv   400 rows: f0..f15, three 0/1 targets a, b, c on the same factors, and a `fold` column
                  naming each row's split (train, val, test)

    python specs/own_data/make_data.py
"""
import csv
from pathlib import Path

import numpy as np

rng = np.random.default_rng(7)
out = Path(__file__).resolve().parent / "data"
out.mkdir(exist_ok=True)
z = rng.normal(size=(1900, 4))
x = (z @ rng.normal(size=(4, 16)) + 0.3 * rng.normal(size=(1900, 16))).astype("float32")
related, unrelated = rng.normal(size=(4, 12)), rng.normal(size=(16, 18))
labels = np.concatenate([z @ related > 0, rng.normal(size=(1900, 16)) @ unrelated > 0], 1).astype("uint8")
np.savez(out / "pt.npz", features=x[:1500], labels=labels[:1500])
ft = (z[1500:] @ related[:, :3] + 0.5 * rng.normal(size=(400, 3)) > 0).astype(int)
folds = ["train"] * 80 + ["val"] * 120 + ["test"] * 200
with open(out / "ft.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([f"f{i}" for i in range(16)] + ["a", "b", "c", "fold"])
    for row, y, fold in zip(x[1500:], ft, folds):
        w.writerow([f"{v:.5f}" for v in row] + list(y) + [fold])

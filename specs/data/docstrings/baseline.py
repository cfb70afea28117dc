"""TF-IDF + logistic regression on the docstrings task: accuracy on the test split (2000 examples)
after training on N labelled examples from the train split.

    .venv/bin/python specs/data/docstrings/baseline.py [--data DIR]

TF-IDF: word 1-2 grams, sublinear tf, fitted on the N training texts only. Logistic regression:
scikit-learn's defaults (lbfgs, C=1, multinomial), max_iter 2000. For N < 1000 each seed draws a
different uniform random subset of train (no stratification) and is the LR's random_state; N = 1000
is all of train, and lbfgs has no randomness, so its 5 seeds give one number (stderr 0). Prints a
markdown table with mean ± stderr over the seeds (stderr = std(ddof=1) / sqrt(seeds)), plus the
majority-class accuracy on test for reference.
"""
import argparse
import gzip
import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

SIZES = (60, 200, 1000)
SEEDS = range(5)


def load(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def accuracy(train, test, seed):
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform([r["text"] for r in train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=2000, random_state=seed).fit(x, [r["label"] for r in train])
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    return float(np.mean(pred == np.array([r["label"] for r in test])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args(argv)
    rows = load(Path(args.data) / "task.jsonl.gz")
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    labels, counts = np.unique([r["label"] for r in test], return_counts=True)
    print(f"test: {len(test)} examples; majority class ({labels[counts.argmax()]}): "
          f"{counts.max() / len(test):.1%}\n")
    print("| labelled examples (N) | test accuracy, mean ± stderr over 5 seeds | per seed |")
    print("|---|---|---|")
    for n in SIZES:
        accs = []
        for seed in SEEDS:
            idx = np.random.RandomState(seed).permutation(len(train))[:n]
            accs.append(accuracy([train[i] for i in sorted(idx)], test, seed))
        a = np.array(accs)
        se = a.std(ddof=1) / np.sqrt(len(a))
        print(f"| {n} | {a.mean():.1%} ± {se:.1%} | {', '.join(f'{v:.1%}' for v in a)} |")


if __name__ == "__main__":
    main()

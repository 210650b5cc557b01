"""Model quality: our trainers against scikit-learn baselines on the same train/test splits.

    .venv/bin/python benchmarks/quality.py                 # every data set, every model
    .venv/bin/python benchmarks/quality.py --sets penguins --models gbdt,hgb

Data sets (the splits are ingest's: ``adult.test`` for Adult, else ingest's seeded, stratified
20% test split):

- ``adult``: UCI Adult, binary (``>50K``), 32,561 train rows;
- ``adult-2k``: Adult's train split sampled to 2,000 rows (stratified, seeded), same test split;
- ``penguins``: Palmer penguins, multiclass (3 species), 276 train rows;
- ``cps1988``: CPS 1988 wages, regression, 22,524 train rows.

The small sets are run ``--repeats`` times (default 5) and the figures averaged: adult-2k with
sample seeds 0, 1, ..., penguins with ingest seeds 42, 43, ... (its 68 test rows make one
misclassified row 0.015-0.02 of macro F1).

Models: ``tabular-net`` and ``gbdt`` (:mod:`kfmlops.train`, default settings; the trainers hold
out their own 10% validation slice of the train split for early stopping), and the baselines
fitted on the whole train split: ``linear`` (median/constant imputation, standard scaling and
one-hot, then LogisticRegression or Ridge) and ``hgb`` (scikit-learn's HistGradientBoosting with
native categorical features and its default early stopping).

Prints one row per (data set, model): the primary metric (ROC AUC; macro F1 with log loss; RMSE;
with its standard deviation over the repeats),
log loss for classification, fit seconds (the fit alone: no I/O, no MLflow), and ``CONSTANT`` when
the model predicts one class (or nearly one value) for every test row; then, per trainer, the gap
to the best baseline on each data set against the aim (within 0.01 ROC AUC or macro F1, within 2%
RMSE).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("tabular-net", "gbdt")
BASELINES = ("linear", "hgb")
AIM = {"binary": 0.01, "multiclass": 0.01, "regression": 0.02}
"""Largest gap to the best baseline: ROC AUC or macro F1 points; a share of the RMSE."""


@dataclass(frozen=True)
class Split:
    name: str
    task: object  # kfmlops.tasks.Task
    train: pd.DataFrame
    test: pd.DataFrame


SMALL = ("adult-2k", "penguins")


@dataclass(frozen=True)
class Row:
    data: str
    model: str
    kind: str
    primary: float
    log_loss: float | None
    seconds: float
    constant: bool
    spread: float = 0.0  # standard deviation of primary over the repeats
    repeats: int = 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="adult,adult-2k,penguins,cps1988")
    parser.add_argument("--models", default=",".join(TRAINERS + BASELINES))
    parser.add_argument("--repeats", type=int, default=5, help="runs of each small set (adult-2k, penguins)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of tabular-net")
    args = parser.parse_args()
    models = args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="kfmlops-quality-"))
    rows = []
    for name in args.sets.split(","):
        runs = {m: [] for m in models}
        for repeat in range(args.repeats if name in SMALL else 1):
            split = load(name, work, repeat)
            print(f"{name} #{repeat}: {split.task.kind}, {len(split.train):,} train / {len(split.test):,} test rows",
                  flush=True)
            for model in models:
                row = evaluate(split, model, work, args.threads)
                runs[model].append(row)
                print(f"  {model}: {row.primary:.4f} in {row.seconds:.1f} s", flush=True)
        rows += [average(r) for r in runs.values()]
    print_table(rows)
    print_verdict(rows, [m for m in models if m in TRAINERS])
    return 0


def average(runs: list[Row]) -> Row:
    """One row for the repeats of a (data set, model)."""
    primary = np.array([r.primary for r in runs])
    loss = None if runs[0].log_loss is None else float(np.mean([r.log_loss for r in runs]))
    return Row(runs[0].data, runs[0].model, runs[0].kind, float(primary.mean()), loss,
               float(np.mean([r.seconds for r in runs])), any(r.constant for r in runs), float(primary.std()), len(runs))


def load(name: str, work: Path, repeat: int) -> Split:
    """Repeat ``repeat`` of data set ``name``: adult-2k's sample seed, penguins' ingest seed (42 + repeat)."""
    from sklearn.model_selection import train_test_split

    from kfmlops.config import DataSpec, IngestConfig
    from kfmlops.ingest import ingest
    from kfmlops.tasks import Task

    adult = ROOT / "data" / "adult"
    specs = {
        "adult": (DataSpec(source=str(adult / "adult.data.gz"), test_source=str(adult / "adult.test.gz"), label="Y",
                           positive_labels=[">50K", ">50K."]), IngestConfig(format="csv", na_values=["?"])),
        "penguins": (DataSpec(source=str(ROOT / "data/penguins/penguins.csv.gz"), label="species"), IngestConfig()),
        "cps1988": (DataSpec(source=str(ROOT / "data/cps1988/cps1988.csv.gz"), label="wage"), IngestConfig()),
    }
    spec, config = specs["adult" if name == "adult-2k" else name]
    if name == "penguins":
        config = config.model_copy(update={"seed": 42 + repeat})
    done = ingest(spec, config, work / f"{name}-train.parquet", work / f"{name}-test.parquet")
    task = Task.from_json(done.task)
    train, test = pd.read_parquet(done.train_path), pd.read_parquet(done.test_path)
    if name == "adult-2k":
        train, _ = train_test_split(train, train_size=2000, stratify=train[task.label], random_state=repeat)
    return Split(name, task, train.reset_index(drop=True), test)


def evaluate(split: Split, model: str, work: Path, threads: int) -> Row:
    task, label = split.task, split.task.label
    features = [c for c in split.train.columns if c != label]
    if model in TRAINERS:
        started = time.monotonic()
        bundle = fit_trainer(split, model, work / f"{split.name}-{model}", threads)
        seconds = time.monotonic() - started
        scores = bundle.scores({c: split.test[c].to_numpy() for c in bundle.features})
    else:
        estimator = baseline(model, task, split.train[features])
        started = time.monotonic()
        estimator.fit(split.train[features], split.train[label])
        seconds = time.monotonic() - started
        scores = baseline_scores(estimator, task, split.test[features])
    return score_row(split, model, scores, seconds)


def fit_trainer(split: Split, trainer: str, out: Path, threads: int):
    from kfmlops.config import TrainConfig
    from kfmlops.train import gbdt, load_bundle
    from kfmlops.train.loop import fit

    config = TrainConfig(trainer=trainer, cpu_threads=threads)
    if trainer == "gbdt":
        gbdt.fit(split.train, split.task, config, out)
    else:
        fit(split.train, split.task, config, out)
    return load_bundle(out)


def baseline(name: str, task, frame: pd.DataFrame):
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric]
    to_text = SimpleImputer(strategy="constant", fill_value="missing")
    if name == "linear":
        encode = make_column_transformer(
            (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (make_pipeline(to_text, OneHotEncoder(handle_unknown="ignore", min_frequency=5)), categorical),
        )
        head = LogisticRegression(max_iter=5000) if task.is_classification else Ridge()
        return make_pipeline(encode, head)
    encode = make_column_transformer(
        ("passthrough", numeric),
        (make_pipeline(to_text, OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)), categorical),
    )
    marks = [False] * len(numeric) + [True] * len(categorical)
    head = (HistGradientBoostingClassifier if task.is_classification else HistGradientBoostingRegressor)(
        categorical_features=marks, random_state=0)
    return make_pipeline(encode, head)


def baseline_scores(estimator, task, frame: pd.DataFrame) -> np.ndarray:
    if not task.is_classification:
        return np.asarray(estimator.predict(frame), dtype=np.float64)
    proba = estimator.predict_proba(frame)
    order = [list(estimator.classes_).index(c) for c in task.classes]
    return proba[:, order]


def score_row(split: Split, model: str, scores: np.ndarray, seconds: float) -> Row:
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    task = split.task
    y = task.encode(split.test[task.label])
    if task.kind == "regression":
        rmse = float(np.sqrt(np.mean((scores - y) ** 2)))
        return Row(split.name, model, task.kind, rmse, None, seconds, bool(scores.std() < 0.01 * y.std()))
    predicted = scores.argmax(axis=1) if task.kind == "multiclass" else (scores[:, 1] >= 0.5).astype(int)
    primary = roc_auc_score(y, scores[:, 1]) if task.kind == "binary" else f1_score(y, predicted, average="macro")
    loss = log_loss(y, np.clip(scores, 1e-15, 1.0), labels=list(range(len(task.classes))))
    return Row(split.name, model, task.kind, float(primary), float(loss), seconds, len(np.unique(predicted)) == 1)


PRIMARY = {"binary": "ROC AUC", "multiclass": "macro F1", "regression": "RMSE"}


def print_table(rows: list[Row]) -> None:
    print("\n| data set | model | primary metric | value | log loss | fit s | constant? |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        loss = f"{r.log_loss:.4f}" if r.log_loss is not None else ""
        value = f"{r.primary:.2f}" if r.kind == "regression" else f"{r.primary:.4f}"
        if r.repeats > 1:
            value += f" ± {r.spread:.4f} ({r.repeats} runs)"
        print(f"| {r.data} | {r.model} | {PRIMARY[r.kind]} | {value} | {loss} | {r.seconds:.1f} | "
              f"{'CONSTANT' if r.constant else 'no'} |")


def gap(row: Row, best: Row) -> float:
    """How far ``row`` is behind ``best``: metric points (higher is better) or a share of the RMSE."""
    if row.kind == "regression":
        return row.primary / best.primary - 1.0
    return best.primary - row.primary


def print_verdict(rows: list[Row], trainers: list[str]) -> None:
    print()
    for trainer in trainers:
        verdicts = []
        for data in dict.fromkeys(r.data for r in rows):
            here = [r for r in rows if r.data == data]
            baselines = [r for r in here if r.model in BASELINES]
            mine = next((r for r in here if r.model == trainer), None)
            if not baselines or mine is None:
                continue
            best = min(baselines, key=lambda r: r.primary) if mine.kind == "regression" else \
                max(baselines, key=lambda r: r.primary)
            behind = gap(mine, best)
            ok = behind <= AIM[mine.kind] and not mine.constant
            unit = f"{behind:+.1%}" if mine.kind == "regression" else f"{behind:+.4f}"
            verdicts.append(ok)
            print(f"{trainer} on {data}: {unit} behind {best.model} ({'within' if ok else 'OUTSIDE'} the aim)")
        if verdicts:
            print(f"{trainer}: {'meets' if all(verdicts) else 'misses'} the aim: within it on {sum(verdicts)} of "
                  f"{len(verdicts)} data sets\n")


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(main())

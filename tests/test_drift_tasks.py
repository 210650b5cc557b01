"""Drift and performance for a multiclass (Palmer penguins) and a regression (CPS 1988 wages) model.

Small scikit-learn models saved with kfmlops metadata (``save_estimator``) and registered in MLflow;
their served outputs logged as the predictor answers them (``{class: probability}``, a number),
canonical labels imported. The drift job takes the task from the served model, scores the
reference (the re-ingested training split) with it, tests the predicted class (categorical) or
value (numerical), measures accuracy and macro F1 or RMSE and MAE, the performance signal fires in
its metric's direction, and the retrain it submits reads back into the same task.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from kfmlops.config import DataSpec, IngestConfig, MlflowConfig
from kfmlops.ingest import ingest
from kfmlops.model_contract import ModelInfo, save_estimator
from kfmlops.monitoring.config import DriftConfig, InferenceLogConfig
from kfmlops.monitoring.drift import EXIT_INCOMPLETE, exit_code, run
from kfmlops.monitoring.lineage import TRAIN_DATA_TAG
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, import_ground_truth
from kfmlops.tasks import Task

from conftest import ROOT

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=timezone.utc)  # windows: [00:00, 12:00) with settle_minutes 5
DATA = {
    "multiclass": DataSpec(source=str(ROOT / "data" / "penguins" / "penguins.csv.gz"), label="species",
                           sensitive_features=["sex"]),
    "regression": DataSpec(source=str(ROOT / "data" / "cps1988" / "cps1988.csv.gz"), label="wage",
                           sensitive_features=["ethnicity"]),
}


def _fit(train: pd.DataFrame, task: Task):
    """A scikit-learn pipeline on every feature: logistic regression on the class names, or ridge regression."""
    features = [c for c in train.columns if c != task.label]
    cats = [c for c in features if train[c].dtype == object]
    nums = [c for c in features if c not in cats]
    encode = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="constant", fill_value="?"), OneHotEncoder(handle_unknown="ignore")), cats),
        (make_pipeline(SimpleImputer(), StandardScaler()), nums),
    )
    learner = LogisticRegression(max_iter=1000) if task.is_classification else Ridge()
    return make_pipeline(encode, learner).fit(train[features], train[task.label]), features


def _served_outputs(model, frame: pd.DataFrame, task: Task) -> list:
    """What the predictor answers per row: ``{class: probability}`` (multiclass) or the value (regression)."""
    if task.is_classification:
        proba = model.predict_proba(frame)
        return [dict(zip(model.classes_, map(float, row))) for row in proba]
    return [float(v) for v in model.predict(frame)]


def _log(root: Path, name: str, frame: pd.DataFrame, outputs: list, labels) -> None:
    start = NOW.replace(hour=0, minute=0)
    records = [
        PredictionRecord(model=name, request_id=f"{name}-{i}", output=output, model_version="1",
                         inputs={k: None if pd.isna(v) else v for k, v in row.items()},
                         timestamp=start + timedelta(seconds=i * 43_000 // len(frame)))
        for i, (row, output) in enumerate(zip(frame.to_dict("records"), outputs))
    ]
    with InferenceLog(InferenceLogConfig(root=str(root))) as log:
        log.append(records)
    truth = pd.DataFrame({"request_id": [r.request_id for r in records], "label": labels})
    truth.to_csv(root.parent / f"truth-{name}.csv", index=False)
    import_ground_truth(root, str(root.parent / f"truth-{name}.csv"))


@pytest.fixture(scope="module", params=["multiclass", "regression"])
def served(request, tmp_path_factory):
    """One task's model trained, saved, registered as champion with its training data's lineage; an
    i.i.d. window (test rows) and a shifted one logged; the training config."""
    from mlflow.tracking import MlflowClient

    kind, spec = request.param, DATA[request.param]
    base = tmp_path_factory.mktemp(kind)
    result = ingest(spec, IngestConfig(), base / "train.parquet", base / "test.parquet")
    task = Task.from_json(result.task)
    assert task.kind == kind
    train, test = pd.read_parquet(result.train_path), pd.read_parquet(result.test_path)
    model, features = _fit(train, task)
    save_estimator(model, base / "model", ModelInfo(task, features, "sklearn"), train)

    mlflow = MlflowConfig(tracking_uri=f"sqlite:///{base / 'mlflow.db'}", experiment="tests", model_name=kind)
    client = MlflowClient(mlflow.tracking_uri)
    client.create_registered_model(kind)
    version = client.create_model_version(kind, source=str(base / "model"), tags={TRAIN_DATA_TAG: spec.source})
    client.set_registered_model_alias(kind, "champion", version.version)

    pool, rng = pd.concat([train, test], ignore_index=True), np.random.default_rng(0)
    if kind == "multiclass":  # none from Torgersen, Biscoe's three times as likely as Dream's: more Gentoo
        iid, weights, rows = test, pool.island.map({"Torgersen": 0.0, "Dream": 1.0, "Biscoe": 3.0}).to_numpy(), 400
    else:  # more schooling: higher wages
        iid = test.iloc[rng.choice(len(test), 2000, replace=False)]
        weights, rows = np.where(pool.education >= 16, 8.0, 1.0), 2000
    shifted = pool.iloc[rng.choice(len(pool), rows, p=weights / weights.sum())]
    for name, frame in (("iid", iid), ("shifted", shifted)):
        _log(base / "log", name, frame[features], _served_outputs(model, frame[features], task), frame[task.label])
    (base / "training.yaml").write_text(yaml.safe_dump({"data": spec.model_dump(mode="json", exclude_unset=True),
                                                        "mlflow": mlflow.model_dump(mode="json")}))
    return base, task, model, features, iid


def _config(base: Path, tmp: Path, window: str, **overrides) -> DriftConfig:
    raw = {
        "training_config": str(base / "training.yaml"), "log_root": str(base / "log"),
        "window": {"model": window, "hours": 12, "settle_minutes": 5}, "output_dir": str(tmp / "out"),
        "drift": {"report_rows": 0}, "policy": {"min_rows": 50, "min_labelled_rows": 20},
        "metrics": {"textfile": str(tmp / "drift.prom")},
        "trigger": {"ledger_dir": str(tmp / "ledger"), "data_dir": str(tmp / "fresh")},
    }
    return DriftConfig.model_validate(raw | overrides)


def test_iid_window_does_not_drift_and_performance_is_measured(served, tmp_path):
    base, task, model, features, iid = served
    summary = run(_config(base, tmp_path, "iid"), NOW)
    assert summary["status"] == "checked" and summary["task"]["kind"] == task.kind
    assert summary["task"]["classes"] == list(task.classes)  # the served model's metadata
    assert summary["served"]["version"] == "1" and summary["reference"]["uri"] == DATA[task.kind].source
    assert summary["drift"]["drifted"] == [] and summary["drift"]["checked"] == len(features)
    (prediction,) = summary["prediction_drift"]["columns"]  # the predicted class or value only
    assert prediction["column"] == "prediction" and not prediction["drifted"]
    assert prediction["column_type"] == ("cat" if task.is_classification else "num")
    assert prediction["reference_rows"] == summary["reference"]["rows"]  # the reference scored by the served model

    performance = summary["performance"]
    assert performance["task"] == task.kind and performance["rows"] == summary["labelled_rows"] == summary["rows"]
    labels, predicted = iid[task.label].to_numpy(), model.predict(iid[features])
    if task.is_classification:
        assert performance["accuracy"] == pytest.approx(float((predicted == labels).mean()))
        assert performance["accuracy"] > 0.9 and performance["macro_f1"] > 0.9
    else:
        assert performance["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - labels) ** 2))))
        assert performance["mae"] == pytest.approx(float(np.mean(np.abs(predicted - labels))))
        assert performance["mean_label"] == pytest.approx(float(labels.mean()))
    prom = (tmp_path / "drift.prom").read_text()
    metric = "accuracy" if task.is_classification else "rmse"
    assert f'kfmlops_drift_performance{{metric="{metric}",model="iid",task="{task.kind}"}}' in prom


def test_shifted_window_drifts_fires_and_retrains_in_the_task(served, tmp_path):
    base, task, *_ = served
    submitted = []
    limits = {"accuracy": 1.01} if task.is_classification else {"rmse": 1.0}  # out of any model's reach
    config = _config(base, tmp_path, "shifted", drift={"report_rows": 500},
                     policy={"signals": ["prediction_drift", "performance"], "min_performance": limits,
                             "min_rows": 50, "min_labelled_rows": 20})
    summary = run(config, NOW, submit=lambda arguments: submitted.append(arguments) or "run-1")
    (prediction,) = summary["prediction_drift"]["columns"]
    assert prediction["drifted"] and prediction["method"] == ("chisquare" if task.is_classification else "wasserstein")
    decision = summary["decision"]
    assert decision["fire"] and decision["signals"] == ["prediction_drift", "performance"]
    metric, limit = next(iter(limits.items()))
    value = summary["performance"][metric]
    assert decision["reasons"][1] == (f"performance: {metric} {value:.4g} {'<' if task.is_classification else '>'} "
                                      f"{limit:g} on {summary['labelled_rows']} labelled rows")
    for name in ("evidently.html", "evidently_performance.html"):
        assert (tmp_path / "out" / name).stat().st_size > 1000

    (arguments,) = submitted
    assert arguments["data"]["task"] == task.kind and summary["retrain"]["rows"] == (
        summary["reference"]["rows"] + summary["labelled_rows"])
    fresh = ingest(DataSpec.parse(arguments["data"]), IngestConfig(format="parquet"), tmp_path / "train.parquet",
                   tmp_path / "test.parquet")
    assert Task.from_json(fresh.task) == task and fresh.train_rows == summary["retrain"]["rows"]


def test_outputs_and_labels_that_are_not_the_tasks(served, tmp_path):
    """Logged outputs of another task, and labels outside the classes (or not numbers): the check is
    incomplete, and says which."""
    base, task, model, features, iid = served
    frame = iid[features].head(60)
    outputs = _served_outputs(model, frame, task)
    if task.is_classification:
        outputs[:10] = [{"cat": 0.4, "dog": 0.6}] * 10
        labels = np.where(np.arange(60) < 5, "Emperor", iid[task.label].head(60))
    else:
        outputs[:10] = [{"a": 1.0}] * 10
        labels = np.where(np.arange(60) < 5, "n/k", iid[task.label].head(60).astype(str))
    _log(tmp_path / "log", "odd", frame, outputs, labels)
    config = _config(base, tmp_path, "odd", log_root=str(tmp_path / "log"))
    summary = run(config, NOW)
    assert summary["status"] == "incomplete" and exit_code(summary) == EXIT_INCOMPLETE
    unreadable, unfit = summary["problems"]
    assert unreadable.startswith(f"10 of 60 logged outputs are not a {task.kind} model's")
    if task.is_classification:
        assert "over the classes ['Adelie', 'Chinstrap', 'Gentoo']" in unreadable
        assert unfit.startswith("5 labels fit none of the classes ['Adelie', 'Chinstrap', 'Gentoo']: 'Emperor' (5 rows)")
    else:
        assert unfit.startswith("5 labels are not numbers: 'n/k' (5 rows)")
    assert summary["labelled_rows"] == 55 and summary["performance"]["rows"] == 50  # rows 10.. have both
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["problems"] == summary["problems"]

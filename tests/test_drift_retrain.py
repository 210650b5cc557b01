"""End to end through kfp.local: a champion trained by the real pipeline serves a shifted window;
the drift job finds its training data by lineage, scores it with the served model, fires, and the
local submitter runs the same pipeline on fresh data; the new version passes (or fails) the same
gates on the same test rows; a retried job starts nothing more."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT
from kfmlops import model_contract
from kfmlops.config import PipelineConfig
from kfmlops.local_run import run_pipeline
from kfmlops.monitoring.config import InferenceLogConfig
from kfmlops.monitoring.drift import main as drift_main
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, import_ground_truth
from kfmlops.register import aliases
from kfmlops.tracking import tracking_uri

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=timezone.utc)


def test_drift_retrains_through_the_same_gates(tmp_path, monkeypatch, adult_test):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    demo = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")
    settings = demo.settings.model_dump(mode="json", by_alias=True)
    settings["train"] = {**settings["train"], "epochs": 4}
    training = {"data": demo.data.model_dump(mode="json"), **settings}
    (tmp_path / "training.yaml").write_text(yaml.safe_dump(training))
    config = PipelineConfig.from_yaml(tmp_path / "training.yaml")
    served = run_pipeline(config.pipeline_arguments()).version
    cfg = config.settings.mlflow

    # the served version's predictions on a shifted sample, logged as the predictor answers: P(>50K)
    rng = np.random.default_rng(3)
    weights = np.where(adult_test.age > 50, 6.0, 1.0) * np.where(adult_test.hours_per_week > 45, 3.0, 1.0)
    rows = adult_test.iloc[rng.choice(len(adult_test), 3000, p=weights / weights.sum())].reset_index(drop=True)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    scores = model_contract.load(f"models:/{cfg.model_name}/{served}").scores(rows.drop(columns=["y"]))[:, 1]
    start = NOW.replace(hour=0, minute=0)
    with InferenceLog(InferenceLogConfig(root=str(tmp_path / "log"))) as log:
        log.append(
            PredictionRecord(model="adult", request_id=f"r{i}", model_version=served, output=float(scores[i]),
                             inputs={k: None if pd.isna(v) else v for k, v in row.items()},
                             timestamp=start + timedelta(seconds=10 * i))
            for i, row in enumerate(rows.drop(columns=["y"]).to_dict("records"))
        )
    pd.DataFrame({"request_id": [f"r{i}" for i in range(0, 3000, 2)], "label": rows["y"][::2].to_numpy()}).to_csv(
        tmp_path / "truth.csv", index=False)
    import_ground_truth(tmp_path / "log", str(tmp_path / "truth.csv"))

    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({
        "training_config": "training.yaml", "log_root": "log", "output_dir": "out",
        "window": {"model": "adult", "hours": 12, "settle_minutes": 5}, "drift": {"report_rows": 0},
        "policy": {"min_rows": 1000, "min_labelled_rows": 500},
        "trigger": {"submitter": "local", "ledger_dir": "ledger", "data_dir": "fresh"},
    }))
    assert drift_main(["--config", str(tmp_path / "drift.yaml"), "--now", NOW.isoformat()]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    uri = tracking_uri(demo.settings.mlflow)
    snapshot = MlflowClient(uri, uri).get_model_version(demo.settings.mlflow.model_name, served).tags["kfmlops.snapshot.train"]
    assert summary["served"]["version"] == served  # the reference is exactly the data it was trained on
    assert summary["reference"]["uri"] == snapshot and snapshot.endswith("/train.parquet")
    assert summary["task"]["classes"] == ["<=50K", ">50K"]  # the served model's metadata
    assert summary["prediction_drift"]["drifted"] and summary["decision"]["fire"]
    retrain = summary["retrain"]
    assert retrain["submitted"] and retrain["status"] == "submitted" and retrain["run_id"].startswith("kfmlops-training-")

    client = MlflowClient(tracking_uri(cfg))
    versions = client.search_model_versions(f"name='{cfg.model_name}'")
    (new,) = [v for v in versions if str(v.version) != str(served)]  # sqlite gives int versions
    assert new.tags["kfmlops.train_data"] == retrain["source"]
    assert new.tags["kfmlops.gate.evaluate.passed"] in ("true", "false")
    champion = aliases(cfg).get("champion")
    # the gates alone decide: the new version is champion exactly when it passed them
    assert (str(champion) == str(new.version)) == (new.tags["kfmlops.all_gates_passed"] == "true")

    assert drift_main(["--config", str(tmp_path / "drift.yaml"), "--now", NOW.isoformat()]) == 0  # a retried job
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert not again["decision"]["fire"] and any("already handled" in b for b in again["decision"]["blocked"])
    assert len(client.search_model_versions(f"name='{cfg.model_name}'")) == 2

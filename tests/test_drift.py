"""The drift job on real Adult data (a binary task) and real Evidently: a shifted window drifts and
fires, an i.i.d. resample does not; verdicts equal DataDriftPreset's; small windows trigger nothing;
metrics reach a Pushgateway; the reference is found through MLflow lineage and scored by the served
model; retraining is submitted once per window, with the task carried over."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from kfmlops.model_contract import ModelInfo, predictions, save_estimator
from kfmlops.monitoring.config import DriftConfig, InferenceLogConfig
from kfmlops.monitoring.drift import EXIT_INCOMPLETE, EXIT_MISCONFIGURED, EXIT_OK, exit_code, run
from kfmlops.monitoring.drift import main as drift_main
from kfmlops.monitoring.lineage import TASK_KEY, TRAIN_DATA_TAG
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, import_ground_truth, read_window
from kfmlops.monitoring.window import current_from_log
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError

from conftest import ADULT_SPEC

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=timezone.utc)  # windows: [00:00, 12:00) with settle_minutes 5
ROWS = 4000


TASK = Task("binary", "y", ("<=50K", ">50K"))


class _Scorer:
    """Logistic regression on a few Adult columns (an sklearn pipeline): the 'served model' whose
    outputs, P(>50K), are logged."""

    CATS, NUMS = ["relationship", "education", "occupation"], ["age", "hours_per_week", "education_num"]

    def __init__(self, train: pd.DataFrame):
        encode = make_pipeline(SimpleImputer(strategy="constant", fill_value="?"), OneHotEncoder(handle_unknown="ignore"))
        features = make_column_transformer((encode, self.CATS), (StandardScaler(), self.NUMS))
        self.model = make_pipeline(features, LogisticRegression(max_iter=500)).fit(train[self.CATS + self.NUMS], train["y"])
        assert list(self.model.classes_) == list(TASK.classes)

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(frame[self.CATS + self.NUMS])[:, 1]

    def without(self, columns: list[str]):
        """Scores of frames lacking ``columns`` (filled with the mean a served model would impute)."""
        return lambda frame: self(frame.assign(**{c: 40 for c in columns}))

    def save(self, out: Path, example: pd.DataFrame) -> Path:
        return save_estimator(self.model, out, ModelInfo(TASK, self.CATS + self.NUMS, "sklearn"), example)


def _log_window(root: Path, model: str, rows: pd.DataFrame, scorer, labelled_share: float = 0.4) -> None:
    """Log ``rows`` as predictions of ``model`` over [00:00, 12:00) (the served output: P(>50K)) and
    import ground truth (canonical labels) for some."""
    rows = rows.reset_index(drop=True)
    scores = scorer(rows)
    start = NOW.replace(hour=0, minute=0)
    features = rows.drop(columns=["y"])
    records = [
        PredictionRecord(model=model, request_id=f"{model}-{i}", output=float(scores[i]), model_version="1",
                         inputs={k: None if pd.isna(v) else v for k, v in row.items()},
                         timestamp=start + timedelta(seconds=i * 43_000 // len(rows)))
        for i, row in enumerate(features.to_dict("records") if len(features.columns) else [{}] * len(rows))
    ]
    with InferenceLog(InferenceLogConfig(root=str(root))) as log:
        log.append(records)
    labelled = np.random.default_rng(0).random(len(rows)) < labelled_share
    truth = pd.DataFrame({"request_id": [r.request_id for r in records], "label": rows["y"]})[labelled]
    truth.to_parquet(root.parent / f"truth-{model}.parquet", index=False)
    import_ground_truth(root, str(root.parent / f"truth-{model}.parquet"))


@pytest.fixture(scope="module")
def monitored(adult, adult_train, adult_test, tmp_path_factory):
    """An inference log with an i.i.d. and a shifted window, a scored reference (the predictions
    dataset's columns beside the train split), the served model saved and a training config."""
    base = tmp_path_factory.mktemp("monitored")
    scorer = _Scorer(adult_train)
    scores = scorer(adult_train)
    reference = pa.Table.from_pandas(
        pd.concat([adult_train, predictions(TASK, np.column_stack([1 - scores, scores]))], axis=1), preserve_index=False)
    pq.write_table(reference.replace_schema_metadata({TASK_KEY: json.dumps(TASK.to_json()).encode()}),
                   base / "reference.parquet")
    scorer.save(base / "model", adult_train)

    rng = np.random.default_rng(7)
    iid = adult_test.iloc[rng.choice(len(adult_test), ROWS)]
    weights = (np.where(adult_test.age > 50, 6.0, 1.0) * np.where(adult_test.hours_per_week > 45, 3.0, 1.0)
               * np.where(adult_test.occupation.isin(["Exec-managerial", "Prof-specialty"]), 3.0, 1.0))
    shifted = adult_test.iloc[rng.choice(len(adult_test), ROWS, p=weights / weights.sum())]
    _log_window(base / "log", "iid", iid, scorer)
    _log_window(base / "log", "shifted", shifted, scorer)
    _log_window(base / "log", "tiny", adult_test.iloc[:50], scorer)
    _log_window(base / "log", "missing3", iid.drop(columns=["age", "sex", "race"]), scorer.without(["age"]))
    _log_window(base / "log", "label-only", iid[["y"]], lambda frame: np.full(len(frame), 0.5))
    (base / "training.yaml").write_text(yaml.safe_dump({
        "data": ADULT_SPEC.model_dump(mode="json"), "ingest": {"format": "csv", "na_values": ["?"]},
    }))
    return base


def _config(base: Path, tmp: Path, model: str, **overrides) -> DriftConfig:
    raw = {
        "training_config": str(base / "training.yaml"), "log_root": str(base / "log"),
        "window": {"model": model, "hours": 12, "settle_minutes": 5}, "output_dir": str(tmp / "out"),
        "reference": {"uri": str(base / "reference.parquet")}, "drift": {"report_rows": 0},
        "policy": {"min_rows": 1000, "min_labelled_rows": 100},
        "metrics": {"textfile": str(tmp / "drift.prom")},
        "trigger": {"ledger_dir": str(tmp / "ledger"), "data_dir": str(tmp / "fresh")},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return DriftConfig.model_validate(raw)


def test_iid_resample_does_not_drift(monitored, tmp_path):
    summary = run(_config(monitored, tmp_path, "iid"), NOW)
    assert summary["status"] == "checked" and summary["rows"] == ROWS and summary["task"]["kind"] == "binary"
    assert summary["drift"]["checked"] == 14 and summary["drift"]["drifted"] == []
    prediction = summary["prediction_drift"]
    assert not prediction["drifted"] and [c["column"] for c in prediction["columns"]] == ["prediction", "proba:>50K"]
    assert [c["column_type"] for c in prediction["columns"]] == ["cat", "num"]
    assert summary["decision"] == {"window_id": summary["window_id"], "fire": False, "signals": [], "reasons": [], "blocked": []}
    performance = summary["performance"]
    assert 1400 < summary["labelled_rows"] < 1800 and performance["rows"] == summary["labelled_rows"]
    assert performance["task"] == "binary" and performance["roc_auc"] > 0.8 and 0.2 < performance["positive_rate"] < 0.3
    prom = (tmp_path / "drift.prom").read_text()
    assert 'kfmlops_drift_share{model="iid"} 0.0' in prom and 'kfmlops_drift_rows_checked{model="iid"} 4000.0' in prom
    assert 'kfmlops_drift_performance{metric="roc_auc",model="iid",task="binary"}' in prom
    assert 'kfmlops_drift_prediction_drifted{column="proba:>50K",method="wasserstein",model="iid"} 0.0' in prom


def test_shifted_sample_drifts_and_matches_the_preset(monitored, tmp_path):
    from evidently import Report
    from evidently.presets import DataDriftPreset

    config = _config(monitored, tmp_path, "shifted", drift={"report_rows": 1000})
    summary = run(config, NOW)
    drift = summary["drift"]
    assert {"age", "hours_per_week", "occupation"} <= set(drift["drifted"])
    prediction = {c["column"]: c for c in summary["prediction_drift"]["columns"]}
    assert prediction["proba:>50K"]["drifted"] and prediction["proba:>50K"]["method"] == "wasserstein"
    assert prediction["prediction"]["method"] == "jensenshannon"  # the predicted class, categorical
    assert "prediction_drift" in summary["decision"]["signals"] and summary["decision"]["fire"]
    assert summary["retrain"]["submitted"] is False  # no submitter given: decided and reported only
    assert summary["quality"]["workclass"]["null_share_current"] > 0
    for name in ("report.html", "summary.json", "evidently.html", "evidently_performance.html"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert "age" in (tmp_path / "out" / "report.html").read_text()

    # the plain preset on the same frames gives the same methods, scores and verdicts
    tested = [c for c in pq.read_schema(monitored / "reference.parquet").names if c not in ("y", "proba:<=50K")]
    reference = pd.read_parquet(monitored / "reference.parquet", columns=tested)
    window = read_window(monitored / "log", "shifted", NOW - timedelta(days=1), NOW)
    current = current_from_log(window, TASK, 0.5).select(tested).to_pandas()
    snapshot = json.loads(Report([DataDriftPreset()]).run(current, reference).json())
    preset = {m["config"]["column"]: (m["value"], m["value"] >= m["config"]["threshold"])
              for m in snapshot["metrics"] if m["metric_name"].startswith("ValueDrift")}
    ours = {c["column"]: (c["score"], c["drifted"]) for c in drift["columns"] + summary["prediction_drift"]["columns"]}
    assert set(preset) == set(ours)
    for column, (score, drifted) in preset.items():
        assert ours[column][0] == pytest.approx(score, rel=1e-9, abs=1e-12) and ours[column][1] == drifted, column


def test_small_window_says_so_and_triggers_nothing(monitored, tmp_path):
    submitted = []
    summary = run(_config(monitored, tmp_path, "tiny"), NOW, submit=lambda args: submitted.append(args) or "run")
    assert summary["status"] == "too_small" and summary["rows"] == 50 and summary["drift"] is None
    assert not summary["decision"]["fire"] and "too small: 50 rows" in summary["decision"]["blocked"][0]
    assert exit_code(summary) == EXIT_OK and "too small: 50 rows" in summary["problems"][0]  # a quiet hour
    assert "Check incomplete" in (tmp_path / "out" / "report.html").read_text()
    empty = run(_config(monitored, tmp_path, "tiny"), NOW + timedelta(days=2))  # the model's partitions, no rows now
    assert empty["rows"] == 0 and "window empty" in empty["decision"]["blocked"][0] and exit_code(empty) == EXIT_OK
    assert submitted == []
    assert 'kfmlops_drift_rows_checked{model="tiny"} 0.0' in (tmp_path / "drift.prom").read_text()


def test_misspelled_model_is_a_misconfiguration(monitored, tmp_path, capsys):
    config = _config(monitored, tmp_path, "ifd")
    with pytest.raises(ConfigError, match="no predictions of model 'ifd' in the inference log .*the log has 'iid', "
                                          "'label-only', 'missing3', 'shifted', 'tiny'"):
        run(config, NOW)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "misconfigured" and "window.model" in summary["error"]
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert drift_main(["--config", str(tmp_path / "drift.yaml"), "--now", NOW.isoformat()]) == EXIT_MISCONFIGURED
    assert "misconfigured, nothing checked: no predictions of model 'ifd'" in capsys.readouterr().err


def test_missing_or_unchecked_features_fail_the_check(monitored, tmp_path, capsys):
    summary = run(_config(monitored, tmp_path, "missing3"), NOW)
    assert summary["status"] == "incomplete" and summary["drift"]["checked"] == 11 and exit_code(summary) == EXIT_INCOMPLETE
    assert summary["problems"] == ["3 of 14 features not checked: age (not in the current data); "
                                   "race (not in the current data); sex (not in the current data)"]
    assert "Check incomplete: 3 of 14 features not checked" in (tmp_path / "out" / "report.html").read_text()

    config = _config(monitored, tmp_path, "label-only")
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert drift_main(["--config", str(tmp_path / "drift.yaml"), "--now", NOW.isoformat()]) == EXIT_INCOMPLETE
    out, err = capsys.readouterr()
    assert "status incomplete, drift share n/a of 0 features checked" in out
    assert "check incomplete: 14 of 14 features not checked: age (not in the current data)" in err
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Check incomplete" in report and "No retraining signal" not in report


def test_empty_current_file(monitored, tmp_path, capsys):
    (tmp_path / "header.csv").write_text("age,workclass,y\n")
    (tmp_path / "empty.csv").write_text("")
    for name, code, message in [("header.csv", EXIT_OK, "window empty"), ("empty.csv", EXIT_MISCONFIGURED, "is empty (0 bytes)")]:
        (tmp_path / "drift.yaml").write_text(yaml.safe_dump({
            "training_config": str(monitored / "training.yaml"), "current": str(tmp_path / name), "output_dir": "out",
            "reference": {"uri": str(monitored / "reference.parquet")}, "trigger": {"ledger_dir": "ledger"},
        }))
        assert drift_main(["--config", str(tmp_path / "drift.yaml")]) == code, name
        assert message in capsys.readouterr().err
        assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] in ("too_small", "misconfigured")


def test_fired_policy_submits_once_per_window(monitored, tmp_path):
    calls = []

    def submit(arguments: dict) -> str:
        calls.append(arguments)
        return f"run-{len(calls)}"

    config = _config(monitored, tmp_path, "shifted")
    first = run(config, NOW, submit)
    assert first["retrain"]["submitted"] and first["retrain"]["run_id"] == "run-1"
    (arguments,) = calls
    data = arguments["data"]
    assert data["label"] == "y" and data["task"] == "binary"  # the task and its class names carried over
    assert data["positive_labels"] == [">50K"] and data["negative_labels"] == ["<=50K"]
    assert data["sensitive_features"] == ["sex", "race"] and arguments["settings"]["ingest"]["format"] == "parquet"
    fresh = pq.read_table(data["source"])
    assert fresh.num_rows == 32561 + first["labelled_rows"]
    assert pq.read_table(data["test_source"]).num_rows == 16281  # gated on the same test rows as before
    reason = json.loads(fresh.schema.metadata[b"kfmlops.retrain_reason"])
    assert reason["window_id"] == first["window_id"] and "age" in reason["drifted"]
    assert set(fresh["y"].to_pylist()) == {"<=50K", ">50K"} and json.loads(fresh.schema.metadata[TASK_KEY])["kind"] == "binary"
    assert reason["performance"]["roc_auc"] == first["performance"]["roc_auc"]

    retried = run(config, NOW, submit)  # the same window again: the job was retried
    assert len(calls) == 1 and not retried["decision"]["fire"]
    assert any("already handled: submitted, run run-1" in b for b in retried["decision"]["blocked"])
    later = run(config, NOW + timedelta(hours=3), submit)  # the next window, inside the cool-down
    assert len(calls) == 1 and any(b.startswith("cool-down") for b in later["decision"]["blocked"])
    prom = Path(config.metrics.textfile).read_text()  # the ledger and the policy, for the alerts
    assert 'kfmlops_retrain_windows{model="shifted",status="submitted"} 1.0' in prom
    assert 'kfmlops_retrain_latest_claimed_timestamp_seconds{model="shifted",status="submitted"} 1.7954355e+09' in prom
    assert 'kfmlops_drift_policy_drift_share{model="shifted"}' in prom


def test_any_current_dataset(monitored, tmp_path):
    """A raw file instead of the log: names, strings, NA tokens and labels (``>50K.``) normalised as ingest does."""
    config = DriftConfig.model_validate({
        "training_config": str(monitored / "training.yaml"), "current": ADULT_SPEC.test_source, "model": "adult",
        "output_dir": str(tmp_path / "out"), "reference": {"uri": str(monitored / "reference.parquet")},
        "drift": {"report_rows": 0}, "trigger": {"ledger_dir": str(tmp_path / "ledger")},
    })
    summary = run(config, NOW)
    assert summary["rows"] == summary["labelled_rows"] == 16281 and summary["drift"]["checked"] == 14
    assert summary["drift"]["drifted"] == [] and summary["quality"]["workclass"]["unseen_share"] == 0.0
    assert summary["window"]["fingerprint"] and summary["prediction_drift_note"] == "the current data has no predictions"


class _Pushgateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self):  # noqa: N802 (http.server's naming)
        self.received.append((self.command, self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_metrics_reach_a_pushgateway(monitored, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        run(_config(monitored, tmp_path, "tiny", metrics={"pushgateway_url": url, "textfile": None}), NOW)
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, body),) = _Pushgateway.received
    assert method == "PUT" and path == "/metrics/job/kfmlops_drift/model/tiny"
    assert b"kfmlops_drift_rows_checked" in body and b"kfmlops_drift_last_run_timestamp_seconds" in body


def test_unknown_model_or_alias_is_a_misconfiguration(monitored, tmp_path, mlflow_store, capsys):
    from mlflow.tracking import MlflowClient

    training = yaml.safe_load((monitored / "training.yaml").read_text())
    training["mlflow"] = mlflow_store.model_dump(mode="json")
    (tmp_path / "training.yaml").write_text(yaml.safe_dump(training))
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({
        "training_config": "training.yaml", "log_root": str(monitored / "log"), "output_dir": "out",
        "window": {"model": "iid", "hours": 12, "settle_minutes": 5}, "trigger": {"ledger_dir": "ledger"},
    }))
    argv = ["--config", str(tmp_path / "drift.yaml"), "--now", NOW.isoformat()]
    client = MlflowClient(mlflow_store.tracking_uri)
    client.create_registered_model("adult-income")
    assert drift_main(argv) == EXIT_MISCONFIGURED
    assert "no model 'adult' in the MLflow registry at sqlite:" in (err := capsys.readouterr().err)
    assert "(known: adult-income); check mlflow.model_name" in err
    client.create_registered_model("adult")
    assert drift_main(argv) == EXIT_MISCONFIGURED  # the window's predictions name version 1
    assert "model 'adult' has no version 1 (versions: none); the served version is reference.model_version, else " \
           "the window's most common model_version" in capsys.readouterr().err
    version = client.create_model_version("adult", source=str(tmp_path))
    client.set_registered_model_alias("adult", "challenger", version.version)
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({  # data without model versions: the alias names the version
        "training_config": "training.yaml", "current": ADULT_SPEC.test_source, "model": "adult", "output_dir": "out",
        "trigger": {"ledger_dir": "ledger"},
    }))
    assert drift_main(argv) == EXIT_MISCONFIGURED
    assert "model 'adult' has no alias 'champion' (aliases: challenger -> v1)" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "misconfigured" and "no alias 'champion'" in summary["error"]


def _register(mlflow_store, model_dir: Path, train_data: str) -> None:
    """``model_dir`` as version 1 of the store's model, champion, with its training data's lineage tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store.tracking_uri)
    client.create_registered_model(mlflow_store.model_name)
    version = client.create_model_version(mlflow_store.model_name, source=str(model_dir), tags={
        TRAIN_DATA_TAG: train_data, "kfmlops.dataset_fingerprint": "x"})
    client.set_registered_model_alias(mlflow_store.model_name, "champion", version.version)


def _lineage_config(monitored: Path, tmp_path: Path, mlflow_store, data: dict | None = None, **drift) -> Path:
    training = yaml.safe_load((monitored / "training.yaml").read_text())
    training["mlflow"] = mlflow_store.model_dump(mode="json")
    training["data"] |= data or {}
    (tmp_path / "training.yaml").write_text(yaml.safe_dump(training))
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({
        "training_config": "training.yaml", "log_root": str(monitored / "log"), "output_dir": "out",
        "window": {"model": "iid", "hours": 12, "settle_minutes": 5}, "drift": {"report_rows": 0},
        "trigger": {"ledger_dir": "ledger"}, **drift,
    }))
    return tmp_path / "drift.yaml"


def test_reference_found_through_lineage_and_cli(monitored, tmp_path, mlflow_store):
    _register(mlflow_store, monitored / "model", str(monitored / "reference.parquet"))
    config = _lineage_config(monitored, tmp_path, mlflow_store, reference={"score_with_model": False})
    assert drift_main(["--config", str(config), "--now", NOW.isoformat()]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["served"]["version"] == "1" and summary["served"]["model_uri"] == f"models:/{mlflow_store.model_name}/1"
    assert summary["reference"] == {"uri": str(monitored / "reference.parquet"), "rows": 32561}
    assert summary["task"] == {**TASK.to_json(), "reason": summary["task"]["reason"]}  # the served model's metadata
    assert summary["prediction_drift"]["drifted"] is False  # the reference's own prediction columns: no scoring


def test_reference_scored_by_the_served_model(monitored, tmp_path, mlflow_store):
    """The served version's training data re-ingested (raw Adult, the same split) and scored by the
    served model itself (an sklearn model through kfmlops.model_contract); a model whose task its
    training data contradicts is a misconfiguration."""
    _register(mlflow_store, monitored / "model", ADULT_SPEC.source)
    config = _lineage_config(monitored, tmp_path, mlflow_store)
    assert drift_main(["--config", str(config), "--now", NOW.isoformat()]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reference"] == {"uri": ADULT_SPEC.source, "rows": 32561} and summary["status"] == "checked"
    prediction = {c["column"]: c for c in summary["prediction_drift"]["columns"]}
    assert not summary["prediction_drift"]["drifted"] and prediction["proba:>50K"]["score"] < 0.05
    assert prediction["prediction"]["reference_rows"] == 32561

    config = _lineage_config(monitored, tmp_path, mlflow_store, data={"task": "multiclass"})
    assert drift_main(["--config", str(config), "--now", NOW.isoformat()]) == EXIT_MISCONFIGURED
    error = json.loads((tmp_path / "out" / "summary.json").read_text())["error"]
    assert "was trained for a binary task with classes ['<=50K', '>50K'], but its training data" in error
    assert "gives a multiclass task" in error

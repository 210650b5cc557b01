"""The drift job on late labels: a window judged before its labels arrived is re-evaluated once
they do, and its labelled performance below the policy's minimum starts one retrain, exactly once,
through the same policy as drift (ledger, cool-down, cap), however often the job runs and labels
arrive. And its serving anomalies: reported, never a reason to retrain."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from kfmlops.monitoring.config import DriftConfig, InferenceLogConfig, PolicyConfig
from kfmlops.monitoring.drift import exit_code, run
from kfmlops.monitoring.late_labels import AWAITING, EVALUATED, DIRECTORY, LateLabels, LateWindow, expired, late_window_id
from kfmlops.monitoring.policy import Ledger, LedgerEntry
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, import_ground_truth

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=timezone.utc)  # the window: [00:00, 12:00)
ROWS = 1500


def _population(rng, n: int) -> pd.DataFrame:
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "g": rng.choice(["a", "b", "c"], n),
                         "y": np.where(x + rng.normal(scale=0.5, size=n) > 0.3, "yes", "no")})


@pytest.fixture
def setup(tmp_path):
    """A training config (train and test CSVs), a window of predictions from a model that has
    stopped predicting anything (its P(yes) is noise), and the window's labels, not imported yet."""
    rng = np.random.default_rng(0)
    _population(rng, 2000).to_csv(tmp_path / "train.csv", index=False)
    _population(rng, 1000).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "training.yaml").write_text(yaml.safe_dump({
        "data": {"source": "train.csv", "test_source": "test.csv", "label": "y", "positive_labels": ["yes"]},
        "ingest": {"format": "csv"},
    }))
    window = _population(rng, ROWS)
    scores = rng.uniform(size=ROWS)
    start = NOW.replace(hour=0, minute=0)
    with InferenceLog(InferenceLogConfig(root=str(tmp_path / "log"))) as log:
        log.append(PredictionRecord(model="m", request_id=f"r{i}", output=float(scores[i]), model_version="1",
                                    inputs={"x": float(row.x), "g": row.g}, timestamp=start + timedelta(seconds=28 * i))
                   for i, row in enumerate(window.itertuples()))
    truth = pd.DataFrame({"request_id": [f"r{i}" for i in range(ROWS)], "label": window["y"]})
    return tmp_path, truth


def _config(base: Path, **policy) -> DriftConfig:
    return DriftConfig.model_validate({
        "training_config": str(base / "training.yaml"), "log_root": str(base / "log"), "output_dir": str(base / "out"),
        "window": {"model": "m", "hours": 12, "settle_minutes": 5},
        "reference": {"uri": str(base / "train.csv"), "score_with_model": False}, "drift": {"report_rows": 0},
        "policy": {"signals": ["dataset_drift", "prediction_drift", "performance"], "min_performance": {"roc_auc": 0.75},
                   "min_rows": 500, "min_labelled_rows": 300, "cooldown_hours": 0, "max_retrains_per_day": 10} | policy,
        "metrics": {"textfile": str(base / "drift.prom")},
        "trigger": {"ledger_dir": str(base / "ledger"), "data_dir": str(base / "fresh")},
    })


def _import(base: Path, truth: pd.DataFrame, rows: slice, name: str) -> None:
    truth.iloc[rows].to_csv(base / f"{name}.csv", index=False)
    import_ground_truth(base / "log", str(base / f"{name}.csv"))


def test_late_labels_retrain_exactly_once(setup):
    base, truth = setup
    calls: list[dict] = []

    def submit(arguments: dict) -> str:
        calls.append(arguments)
        return f"run-{len(calls)}"

    config = _config(base)
    first = run(config, NOW, submit)  # judged with no labels at all: recorded as awaiting them
    assert first["status"] == "checked" and first["labelled_rows"] == 0 and not first["decision"]["fire"]
    assert first["late_labels"] == {"evaluated": [], "awaiting": 1, "expired": 0}
    assert not first["anomalies"]["anomalous"] and "0 trailing intervals" in first["anomalies"]["rate"]["note"]
    late = LateLabels(base / "ledger" / DIRECTORY)
    (window,) = late.all()
    assert (window.window_id, window.status, window.labelled_rows) == (first["window_id"], AWAITING, 0)
    assert window.task["kind"] == "binary" and window.reference_uri == str(base / "train.csv")
    assert run(config, NOW, submit)["late_labels"]["awaiting"] == 1 and len(late.all()) == 1  # a retried job: one record

    _import(base, truth, slice(0, 200), "first")  # fewer than min_labelled_rows: still waiting
    later = NOW + timedelta(days=1)
    waiting = run(config, later, submit)
    assert waiting["status"] == "too_small" and waiting["late_labels"]["awaiting"] == 1 and calls == []

    _import(base, truth, slice(200, 700), "second")
    dry = run(config, later + timedelta(hours=1), None)  # --dry-run: decided, not consumed
    (judged,) = dry["late_labels"]["evaluated"]
    assert judged["decision"]["fire"] and judged["retrain"]["submitted"] is False and dry["late_labels"]["awaiting"] == 1

    fired = run(config, later + timedelta(hours=1), submit)
    (judged,) = fired["late_labels"]["evaluated"]
    assert judged["labelled_rows"] == 700 and judged["performance"]["roc_auc"] < 0.6
    assert judged["decision"]["signals"] == ["performance"] and judged["decision"]["fire"]
    assert judged["decision"]["reasons"][0].startswith("performance: roc_auc ") and "< 0.75 on 700 labelled rows" in \
        judged["decision"]["reasons"][0]
    assert judged["retrain"]["submitted"] and judged["retrain"]["run_id"] == "run-1" and len(calls) == 1
    assert fired["late_labels"]["awaiting"] == 0 and exit_code(fired) == 0
    ((arguments,),) = [calls]
    assert arguments["run_tags"]["kfmlops.retrain.signals"] == "performance"
    fresh = pq.read_table(arguments["data"]["source"])
    assert fresh.num_rows == 2000 + 700  # the reference plus the window's labelled rows
    reason = json.loads(fresh.schema.metadata[b"kfmlops.retrain_reason"])
    assert reason["late_labels"] and reason["judged_window_id"] == first["window_id"]
    entry = Ledger(base / "ledger").get(late_window_id(window.identity))
    assert entry.status == "submitted" and entry.reasons == judged["decision"]["reasons"]
    assert late.get(window.window_id).status == EVALUATED and late.get(window.window_id).decision["fire"]
    assert 'kfmlops_drift_retrain_triggered{model="m"} 1.0' in (base / "drift.prom").read_text()

    again = run(config, later + timedelta(hours=1), submit)  # the job runs again: evaluated once
    assert again["late_labels"] == {"evaluated": [], "awaiting": 0, "expired": 0} and len(calls) == 1
    _import(base, truth, slice(700, ROWS), "third")  # more labels for the same window: no second retrain
    third = run(config, later + timedelta(hours=2), submit)
    assert third["late_labels"]["evaluated"] == [] and len(calls) == 1
    prom = (base / "drift.prom").read_text()
    assert 'kfmlops_drift_retrain_triggered{model="m"} 0.0' in prom
    assert 'kfmlops_drift_windows_awaiting_labels{model="m"} 0.0' in prom


def test_labelled_performance_above_the_minimum_is_evaluated_once_without_a_retrain(setup):
    base, truth = setup
    config = _config(base, min_performance={"accuracy": 0.3})  # a noise model still beats 30% accuracy
    run(config, NOW, lambda arguments: pytest.fail("nothing should be submitted"))
    _import(base, truth, slice(0, ROWS), "all")
    report = run(config, NOW + timedelta(days=1), lambda arguments: pytest.fail("nothing should be submitted"))
    (judged,) = report["late_labels"]["evaluated"]
    assert judged["performance"]["accuracy"] > 0.3 and not judged["decision"]["signals"] and judged["retrain"] == {}
    assert LateLabels(base / "ledger" / DIRECTORY).awaiting("m") == []


def test_late_label_retrain_obeys_the_cool_down(setup):
    base, truth = setup
    calls = []
    config = _config(base, cooldown_hours=48)
    run(config, NOW, calls.append)
    Ledger(base / "ledger").claim(LedgerEntry(  # a drift retrain of the model an hour before
        window_id="earlier", model="m", claimed_at=(NOW + timedelta(hours=23)).timestamp(), status="submitted",
        reasons=["dataset drift"], window={}))
    _import(base, truth, slice(0, ROWS), "all")
    report = run(config, NOW + timedelta(days=1), calls.append)
    (judged,) = report["late_labels"]["evaluated"]
    assert judged["decision"]["signals"] == ["performance"] and not judged["decision"]["fire"] and calls == []
    assert judged["decision"]["blocked"][0].startswith("cool-down: last retrain 1.0 h ago")
    assert report["late_labels"]["awaiting"] == 0  # judged: held back by the policy, as a drift window would be


def test_windows_without_labels_expire():
    window = LateWindow("w", "m", "2026-11-23T00:00:00+00:00", "2026-11-23T12:00:00+00:00", {}, "ref", judged_at=0.0,
                        labelled_rows=0)
    policy = PolicyConfig(label_wait_hours=24)
    assert not expired(window, policy, 23 * 3600) and expired(window, policy, 25 * 3600)


def test_serving_anomaly_is_reported_and_retrains_nothing(setup):
    """A day of steady traffic with P(yes) around 0.3 before the window; the window's scores are
    uniform: the score shift is reported (summary, metrics), the rate is steady, nothing fires."""
    base, _ = setup
    rng = np.random.default_rng(5)
    since = NOW.replace(hour=0, minute=0) - timedelta(hours=24)
    with InferenceLog(InferenceLogConfig(root=str(base / "log"))) as log:
        log.append(PredictionRecord(model="m", request_id=f"t{i}", output=float(rng.beta(2, 5)), model_version="1",
                                    inputs={"x": float(rng.normal()), "g": "a"}, timestamp=since + timedelta(seconds=28 * i))
                   for i in range(24 * 3600 // 28))
    config = _config(base).model_copy(update={"anomaly": _config(base).anomaly.model_copy(update={"trailing_hours": 24})})
    summary = run(config, NOW, lambda arguments: pytest.fail("an anomaly is no reason to retrain"))
    anomalies = summary["anomalies"]
    assert anomalies["scores"]["anomalous"] and anomalies["scores"]["psi"] > 0.25
    assert anomalies["rate"]["checked"] and not anomalies["rate"]["anomalous"]
    assert anomalies["reasons"][0].startswith("served scores: PSI") and not summary["decision"]["fire"]
    prom = (base / "drift.prom").read_text()
    assert 'kfmlops_serving_anomaly{check="scores",model="m"} 1.0' in prom
    assert 'kfmlops_serving_anomaly{check="rate",model="m"} 0.0' in prom
    assert "Serving anomalies" in (base / "out" / "report.html").read_text()

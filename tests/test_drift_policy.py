"""Retraining policy and trigger: thresholds, minimum rows, cool-down, daily cap, idempotence under
retries and concurrent claims, fresh data, and the submitters (a real recording one, the local one)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfmlops.config import DataSpec, PipelineConfig, Settings
from kfmlops.ingest import ingest
from kfmlops.typed import ConfigError
from kfmlops.local_run import LocalRun
from kfmlops.monitoring.config import DriftConfig, PolicyConfig, TriggerConfig
from kfmlops.monitoring.lineage import load_reference
from kfmlops.monitoring.policy import (
    FAILED,
    SUBMITTED,
    Figures,
    Ledger,
    LedgerEntry,
    check_performance_limits,
    decide,
    window_id,
)
from kfmlops.monitoring.trigger import (
    fresh_pipeline_config,
    fresh_test_data,
    fresh_training_data,
    local_submitter,
    retrain,
    submitter_for,
)

from kfmlops.tasks import Task

from conftest import ADULT_INGEST, ADULT_SPEC, ROOT

HOUR = 3600.0
TASK = Task("binary", "y", ("<=50K", ">50K"))
NOW = 1_800_000_000.0
DRIFTING = Figures(rows=5000, labelled_rows=500, drift_share=0.6, drifted_features=["age", "sex", "race"],
                   drifted_predictions={"proba:>50K": 0.3}, task="binary", performance={"roc_auc": 0.7, "accuracy": 0.8})
QUIET = Figures(rows=5000, labelled_rows=500, drift_share=0.1, drifted_features=["age"],
                task="binary", performance={"roc_auc": 0.9, "accuracy": 0.85})


class Recorder:
    """A real submitter: records the arguments it was called with and returns a new run id."""

    def __init__(self, fail: bool = False):
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, arguments: dict) -> str:
        self.calls.append(arguments)
        if self.fail:
            raise ConnectionError("pipeline API unreachable")
        return f"run-{len(self.calls)}"


def _entry(wid: str, claimed_at: float, model: str = "adult") -> LedgerEntry:
    return LedgerEntry(window_id=wid, model=model, claimed_at=claimed_at, status=SUBMITTED, reasons=[], window={})


def test_signals_and_thresholds(tmp_path):
    ledger = Ledger(tmp_path)
    policy = PolicyConfig()
    fired = decide(DRIFTING, policy, ledger, "w1", "adult", NOW)
    assert fired.fire and fired.signals == ["dataset_drift", "prediction_drift"] and fired.blocked == []
    assert "60% of features drifted (threshold 50%): age, sex, race" in fired.reasons[0]
    assert decide(QUIET, policy, ledger, "w1", "adult", NOW).signals == []
    assert not decide(DRIFTING, PolicyConfig(drift_share=0.7, signals=["dataset_drift"]), ledger, "w1", "adult", NOW).fire
    watched = PolicyConfig(signals=["feature_drift"], watched_features=["age"])
    assert decide(QUIET, watched, ledger, "w1", "adult", NOW).reasons == ["feature drift: age"]
    assert not decide(QUIET, PolicyConfig(signals=["feature_drift"], watched_features=["fnlwgt"]), ledger, "w1", "adult", NOW).fire
    assert fired.reasons[1] == "prediction drift: proba:>50K score 0.3"


def test_performance_signal_per_task(tmp_path):
    """Each limit in its metric's direction: higher is better for ROC AUC and accuracy, lower for RMSE."""
    ledger = Ledger(tmp_path)
    performance = PolicyConfig(signals=["performance"], min_performance={"roc_auc": 0.8, "accuracy": 0.82})
    fired = decide(DRIFTING, performance, ledger, "w1", "adult", NOW)
    assert fired.signals == ["performance"] and fired.reasons == [
        "performance: roc_auc 0.7 < 0.8 on 500 labelled rows", "performance: accuracy 0.8 < 0.82 on 500 labelled rows"]
    assert not decide(QUIET, performance, ledger, "w1", "adult", NOW).fire
    one_class = Figures(rows=5000, labelled_rows=500, task="binary", performance={"roc_auc": None, "accuracy": 0.9})
    assert not decide(one_class, performance, ledger, "w1", "adult", NOW).signals  # no ROC AUC of one class
    assert not decide(replace(DRIFTING, labelled_rows=50), performance, ledger, "w1", "adult", NOW).signals

    rmse = PolicyConfig(signals=["performance"], min_performance={"rmse": 250.0}, min_labelled_rows=10)
    worse = Figures(rows=2000, labelled_rows=300, task="regression", performance={"rmse": 301.5, "mae": 200.0})
    assert decide(worse, rmse, ledger, "w2", "cps", NOW).reasons == ["performance: rmse 301.5 > 250 on 300 labelled rows"]
    assert not decide(replace(worse, performance={"rmse": 249.0}), rmse, ledger, "w2", "cps", NOW).signals
    multiclass = Figures(rows=2000, labelled_rows=300, task="multiclass", performance={"accuracy": 0.9, "macro_f1": 0.7})
    macro = PolicyConfig(signals=["performance"], min_performance={"macro_f1": 0.75})
    assert decide(multiclass, macro, ledger, "w3", "penguins", NOW).signals == ["performance"]

    check_performance_limits(rmse, "regression")
    with pytest.raises(ConfigError, match=r"names \['rmse'\], which a binary model's window does not measure; a binary "
                                          "task has roc_auc, accuracy, precision, recall, f1"):
        check_performance_limits(rmse, "binary")
    with pytest.raises(ValueError, match="the performance signal needs min_performance"):
        PolicyConfig(signals=["performance"])
    with pytest.raises(ValueError, match=r"unknown metrics \['auc'\]; known: binary: roc_auc"):
        PolicyConfig(min_performance={"auc": 0.8})


def test_small_window_and_few_labels_trigger_nothing(tmp_path):
    ledger = Ledger(tmp_path)
    small = decide(Figures(rows=999), PolicyConfig(min_rows=1000), ledger, "w", "adult", NOW)
    assert not small.fire and small.blocked == ["window too small: 999 rows (policy.min_rows = 1000); nothing checked"]
    assert decide(Figures(rows=0), PolicyConfig(), ledger, "w", "adult", NOW).blocked[0].startswith("window empty")
    unlabelled = decide(DRIFTING, PolicyConfig(min_labelled_rows=1000), ledger, "w", "adult", NOW)
    assert not unlabelled.fire and unlabelled.signals and "500 labelled rows" in unlabelled.blocked[0]


def test_cooldown_and_daily_cap(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.claim(_entry("old", NOW - 30 * HOUR))
    ledger.claim(_entry("other-model", NOW - 1 * HOUR, model="census"))
    policy = PolicyConfig(cooldown_hours=6, max_retrains_per_day=2)
    assert decide(DRIFTING, policy, ledger, "w", "adult", NOW).fire  # other models do not count
    ledger.claim(_entry("recent", NOW - 2 * HOUR))
    cooling = decide(DRIFTING, policy, ledger, "w", "adult", NOW)
    assert not cooling.fire and cooling.blocked == ["cool-down: last retrain 2.0 h ago (policy.cooldown_hours = 6.0)"]
    assert decide(DRIFTING, policy, ledger, "w", "adult", NOW + 5 * HOUR).fire
    ledger.claim(_entry("recent2", NOW - 7 * HOUR))
    capped = decide(DRIFTING, policy, ledger, "w", "adult", NOW + 5 * HOUR)
    assert capped.blocked == ["daily cap: 2 retrains in the last 24 h (max 2)"]
    assert "max_retrains_per_day is 0" in decide(DRIFTING, PolicyConfig(max_retrains_per_day=0), Ledger(tmp_path / "x"),
                                                 "w", "adult", NOW).blocked[0]


def test_retrain_submits_once_per_window(tmp_path):
    ledger, submit = Ledger(tmp_path), Recorder()
    decision = decide(DRIFTING, PolicyConfig(), ledger, window_id({"model": "adult", "start": "t0"}), "adult", NOW)
    arguments = {"data": {"source": "/data/fresh.parquet", "label": "y"}}
    entry, submitted = retrain(decision, "adult", {"start": "t0"}, arguments, ledger, submit, NOW)
    assert submitted and entry.status == SUBMITTED and entry.run_id == "run-1" and submit.calls == [arguments]
    again, submitted = retrain(decision, "adult", {"start": "t0"}, arguments, ledger, submit, NOW + 1)
    assert not submitted and again == entry and len(submit.calls) == 1  # a retried job does not start a second run
    assert ledger.get(decision.window_id).reasons == decision.reasons
    later = decide(DRIFTING, PolicyConfig(cooldown_hours=0, max_retrains_per_day=5), ledger, decision.window_id, "adult", NOW)
    assert not later.fire and later.blocked == ["window already handled: submitted, run run-1"]


def test_failed_submission_is_recorded_and_never_retried(tmp_path):
    ledger = Ledger(tmp_path)
    decision = decide(DRIFTING, PolicyConfig(), ledger, "w-fail", "adult", NOW)
    with pytest.raises(ConnectionError):
        retrain(decision, "adult", {}, {"data": {"source": "s"}}, ledger, Recorder(fail=True), NOW)
    entry = ledger.get("w-fail")
    assert entry.status == FAILED and "unreachable" in entry.error
    submit = Recorder()
    assert retrain(decision, "adult", {}, {"data": {"source": "s"}}, ledger, submit, NOW)[1] is False and submit.calls == []


def test_concurrent_claims_admit_one(tmp_path):
    ledger, submit = Ledger(tmp_path), Recorder()
    decision = decide(DRIFTING, PolicyConfig(), ledger, "w-race", "adult", NOW)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: retrain(decision, "adult", {}, {"data": {"source": "s"}}, Ledger(tmp_path), submit, NOW)[1], range(16)))
    assert results.count(True) == 1 and len(submit.calls) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_fresh_data_keeps_the_gates_and_reads_back(tmp_path, adult, adult_train):
    reference = pq.read_table(adult.train_path)
    window = pa.table({"age": [40, 60], "sex": ["Male", "Female"], "hours_per_week": [40.0, 70.0], "y": [">50K", "<=50K"],
                       "unrelated": ["x", "y"]})
    path = tmp_path / "fresh" / "train.parquet"
    rows = fresh_training_data(reference, window, TASK, path, {"reasons": ["dataset drift"]})
    assert rows == len(adult_train) + 2
    fresh = pq.read_table(path)
    assert fresh.schema.names == reference.schema.names and fresh["age"].type == pa.int64()
    assert fresh.slice(len(adult_train))["workclass"].null_count == 2
    assert json.loads(fresh.schema.metadata[b"kfmlops.retrain_reason"]) == {"reasons": ["dataset drift"]}

    training = PipelineConfig(data=ADULT_SPEC, settings={"ingest": ADULT_INGEST.model_dump(), "evaluate": {"limits": {"roc_auc": 0.8}}})
    assert fresh_test_data(training, TASK, tmp_path / "fresh" / "test.parquet") == 16281
    fresh_config = fresh_pipeline_config(training, str(path), str(tmp_path / "fresh" / "test.parquet"), TASK)
    arguments = fresh_config.pipeline_arguments()
    settings = Settings.parse(arguments["settings"])
    assert settings.model_copy(update={"ingest": training.settings.ingest}) == training.settings  # same gates
    assert settings.ingest.format == "parquet" and arguments["data"]["label"] == "y" and arguments["data"]["task"] == "binary"
    # the retraining pipeline's ingest reads the canonical labels back into the same task and rows
    result = ingest(DataSpec.parse(arguments["data"]), settings.ingest, tmp_path / "train.parquet", tmp_path / "test.parquet")
    assert (Task.from_json(result.task), result.train_rows, result.test_rows) == (TASK, rows, 16281)
    # the next drift run reads the fresh data back whole as its reference, with or without a test source
    for config in (training, training.model_copy(update={"data": ADULT_SPEC.model_copy(update={"test_source": None})})):
        again, task = load_reference(str(path), config)
        assert task == TASK and again.num_rows == rows and again["y"].to_pylist()[-2:] == [">50K", "<=50K"]

    with pytest.raises(ValueError, match="does not convert"):
        fresh_training_data(reference, window.set_column(0, "age", pa.array(["old", "young"])), TASK, path, {})


def test_submitters(monkeypatch):
    assert submitter_for(TriggerConfig()) is None
    with pytest.raises(ValueError, match="kfp_host and pipeline_package"):
        TriggerConfig(submitter="kfp")
    seen = []

    def run_pipeline(arguments, *, progress, verbose):  # stands in for kfp.local: records, returns what it does
        assert not verbose  # one progress line per step, the steps' logs in files
        seen.append(arguments)
        return LocalRun(version="2", pipeline_root=Path("/tmp/pipeline_root/kfmlops-training-20261123"), seconds=1.0)

    monkeypatch.setattr("kfmlops.local_run.run_pipeline", run_pipeline)
    assert submitter_for(TriggerConfig(submitter="local"))({"source": "s"}) == "kfmlops-training-20261123"
    assert local_submitter()({"source": "t"}) == "kfmlops-training-20261123" and seen == [{"source": "s"}, {"source": "t"}]


class _KfpApi(BaseHTTPRequestHandler):
    """Just enough of the Kubeflow Pipelines v2beta1 REST API for ``create_run_from_pipeline_package``."""

    received: list[tuple[str, str, dict]] = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.received.append((self.command, self.path.split("?")[0], body))
        if self.path.startswith("/apis/v2beta1/runs"):
            reply = {"run_id": "kfp-run-1", "experiment_id": "e1", "display_name": body.get("display_name")}
        elif self.command == "POST":
            reply = {"experiment_id": "e1", "display_name": body.get("display_name")}
        else:
            reply = {}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def test_kfp_submitter_creates_a_run(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    training = PipelineConfig(data=ADULT_SPEC, settings={"ingest": ADULT_INGEST.model_dump()})
    arguments = fresh_pipeline_config(training, "/fresh/train.parquet", "/fresh/test.parquet", TASK).pipeline_arguments()
    try:
        config = TriggerConfig(submitter="kfp", kfp_host=f"http://127.0.0.1:{server.server_address[1]}",
                               pipeline_package=str(ROOT / "pipelines" / "training.yaml"), experiment="retraining")
        assert submitter_for(config)(arguments) == "kfp-run-1"
    finally:
        server.shutdown()
        server.server_close()
    ((_, _, run),) = [r for r in _KfpApi.received if r[1] == "/apis/v2beta1/runs"]
    assert run["experiment_id"] == "e1" and run["display_name"].startswith("kfmlops-retrain-")
    spec = run["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # nested when the package carries a platform spec too
    assert spec["pipelineInfo"]["name"] == "kfmlops-training"
    assert run["runtime_config"]["parameters"] == arguments
    assert ("POST", "/apis/v2beta1/experiments", {"display_name": "retraining", "namespace": ""}) in _KfpApi.received


def test_config_from_yaml_resolves_paths(tmp_path):
    (tmp_path / "drift.yaml").write_text(
        "training_config: pipeline.yaml\nlog_root: log\nwindow: {model: adult}\n"
        "trigger: {submitter: kfp, kfp_host: 'http://127.0.0.1:1', pipeline_package: pipelines/training.yaml}\n"
    )
    config = DriftConfig.from_yaml(tmp_path / "drift.yaml")
    assert config.log_root == str(tmp_path / "log") and config.trigger.pipeline_package == str(tmp_path / "pipelines/training.yaml")
    assert config.trigger.kfp_host == "http://127.0.0.1:1" and config.model_name == "adult"
    (tmp_path / "bad.yaml").write_text("training_config: p.yaml\nlog_root: log\ncurrent: x.csv\n")
    with pytest.raises(ConfigError, match="exactly one of log_root"):
        DriftConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("training_config: p.yaml\ncurrent: x.csv\npolicy: {cooldown: 3}\n")
    with pytest.raises(ConfigError, match="policy.cooldown"):
        DriftConfig.from_yaml(tmp_path / "typo.yaml")

"""``examples/drift_demo.py`` (``make drift-demo``) end to end in a fresh KFMLOPS_HOME: the training
pipeline makes the first champion, the real predictor serves it on loopback, the Adult test split as
it is triggers nothing, the shifted sample fires the drift job, the local submitter retrains through
kfp.local and the new version carries the gates' verdicts; rerunning phase 2's job starts nothing
more (the ledger)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from kfmlops.config import PipelineConfig
from kfmlops.monitoring.drift import main as drift_main
from kfmlops.register import aliases
from kfmlops.tracking import tracking_uri

pytestmark = pytest.mark.slow


def _demo():
    """``examples/drift_demo.py`` as a module (examples/ is not part of the package)."""
    spec = importlib.util.spec_from_file_location("drift_demo", ROOT / "examples" / "drift_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drift_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml").settings.mlflow

    assert _demo().main([]) == 0
    out = capsys.readouterr().out
    (tmp_path / "demo.out").write_text(out)  # for a failing assertion below
    assert "has no champion" in out and "running the training pipeline first" in out

    (demo_dir,) = (tmp_path / "home" / "drift" / "demo").iterdir()
    record = json.loads((demo_dir / "demo.json").read_text())
    assert record["served_version"] == "1"
    first, second = (json.loads(Path(p["summary"]).read_text()) for p in record["phases"])

    # phase 1: the test split as it is, every row labelled; no drift, no signal, nothing started
    assert first["status"] == "checked" and first["rows"] == first["labelled_rows"] == 16281
    assert first["task"]["kind"] == "binary" and first["task"]["classes"] == ["<=50K", ">50K"]
    assert first["performance"]["roc_auc"] > 0.85
    assert first["served"]["version"] == "1" and first["drift"]["drifted"] == [] and first["drift"]["share"] == 0
    assert not first["prediction_drift"]["drifted"]
    assert first["decision"] == {**first["decision"], "fire": False, "signals": [], "blocked": []}
    assert first["retrain"] == {}
    assert {"age", "hours_per_week"}.isdisjoint(first["drift"]["drifted"])

    # phase 2: the shifted sample; the drifted columns include the shifted ones; it fires and retrains
    assert second["rows"] == second["labelled_rows"] == 4000
    assert {"age", "hours_per_week", "occupation"} <= set(second["drift"]["drifted"])
    assert second["drift"]["dataset_drift"] and second["prediction_drift"]["drifted"]
    assert second["decision"]["fire"] and set(second["decision"]["signals"]) == {"dataset_drift", "prediction_drift"}
    retrain = second["retrain"]
    assert retrain["submitted"] and retrain["status"] == "submitted" and retrain["run_id"].startswith("kfmlops-training-")
    assert retrain["rows"] == second["reference"]["rows"] + 4000
    for name in ("report.html", "summary.json", "drift.yaml", "evidently.html"):
        assert (demo_dir / "phase-2" / name).is_file()

    # the new version in the registry, trained on the fresh data, with every gate's verdict
    client = MlflowClient(tracking_uri(cfg))
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{cfg.model_name}'")}
    assert set(versions) == {"1", "2"} and record["retrain"]["version"] == "2"
    new = versions["2"]
    assert new.tags["kfmlops.train_data"] == retrain["source"]
    for gate in ("evaluate", "fairness"):
        assert new.tags[f"kfmlops.gate.{gate}.passed"] in ("true", "false")
        assert record["retrain"]["gates"][gate] == (new.tags[f"kfmlops.gate.{gate}.passed"] == "true")
    assert record["retrain"]["gates"]["validate"]  # a validation error stops the run before register
    passed = new.tags["kfmlops.all_gates_passed"] == "true"
    assert (aliases(cfg).get("champion") == "2") == passed  # the gates alone decide the promotion
    assert ("champion" in record["retrain"]["aliases"]) == passed

    # what was printed: per phase, the retraining run's summary, where the reports are
    assert "decision          no retrain: no signal on" in out and "decision          RETRAIN" in out
    assert "drifted columns   age" in out or "                    age" in out
    assert f"kfmlops training run: {cfg.model_name} version 2" in out and "Gates" in out
    assert str(demo_dir / "phase-2" / "report.html") in out
    assert "retrained adult-income v2 (served: v1): gates validate PASS, evaluate " in out

    # the predictor was stopped
    with pytest.raises(httpx.TransportError):
        httpx.get(record["predictor_url"] + "/v2/health/live", timeout=2)

    # a retried phase-2 job: the ledger refuses a second retrain for the window
    phase2 = record["phases"][1]
    assert drift_main(["--config", phase2["config"], "--now", phase2["now"]]) == 0
    again = json.loads(Path(phase2["summary"]).read_text())
    assert again["window_id"] == second["window_id"] and again["decision"]["signals"]
    assert not again["decision"]["fire"] and any("already handled" in b for b in again["decision"]["blocked"])
    assert len(client.search_model_versions(f"name='{cfg.model_name}'")) == 2

"""The whole training pipeline through kfp.local, asserted on the MLflow registry and the artifacts."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
import mlflow

from kfmlops.config import PipelineConfig, ProvenanceConfig, Settings
from kfmlops.provenance import PROVENANCE_FILE, verify, verify_key
from kfmlops import run_summary
from kfmlops.local_run import PipelineFailed, main, run_pipeline
from kfmlops.register import aliases
from kfmlops.tracking import tracking_uri

pytestmark = pytest.mark.slow

DEMO = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")


def _config(**sections) -> PipelineConfig:
    raw = DEMO.settings.model_dump(mode="json", by_alias=True)
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return DEMO.model_copy(update={"settings": type(DEMO.settings).parse(raw)})


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_pipeline_registers_a_gated_champion_then_keeps_it_from_a_weaker_model(home):
    good = _config(train={"epochs": 6})
    first = run_pipeline(good.pipeline_arguments())
    cfg = good.settings.mlflow
    client = MlflowClient(tracking_uri(cfg))
    mv = client.get_model_version(cfg.model_name, first.version)
    tags = mv.tags
    assert tags["kfmlops.all_gates_passed"] == "true"
    assert len(tags["kfmlops.dataset_fingerprint"]) == 64
    assert tags["kfmlops.config_hash"] == good.settings.digest()
    assert tags["kfmlops.train_data"].endswith("adult.data.gz")
    assert tags["kfmlops.pipeline_run_id"] not in ("", "none")
    assert float(tags["kfmlops.metric.roc_auc"]) >= 0.89
    assert aliases(cfg) == {"challenger": first.version, "champion": first.version}
    assert tags["kfmlops.deploy.status"] == "promoted"

    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert {"val_roc_auc", "test_roc_auc", "fairness.sex.equalized_odds_difference"} <= set(run.data.metrics)
    assert len(client.get_metric_history(mv.run_id, "train_loss")) == 6
    for step, output in [("validate", "report"), ("evaluate", "report"), ("fairness", "report"),
                         ("evaluate", "predictions"), ("train", "model")]:
        assert (first.pipeline_root / step / output).exists(), f"{step}/{output} missing"
    assert (first.pipeline_root / "train" / "model" / "weights.pt").is_file()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.model_name}@champion", dst_path=str(home / "dl")))
    record = verify(next(local.rglob(PROVENANCE_FILE)).parent, verify_key(ProvenanceConfig()))
    assert record.dataset_fingerprint == tags["kfmlops.dataset_fingerprint"]
    assert {"evaluate", "fairness"} == set(record.gates)

    weak = _config(train={"epochs": 1, "hidden_units": [2],
                          "exclude_features": ["education", "education_num", "occupation", "capital_gain",
                                               "capital_loss", "relationship", "marital_status"]})
    second = run_pipeline(weak.pipeline_arguments())
    assert second.version != first.version
    assert aliases(cfg) == {"challenger": second.version, "champion": first.version}
    weak_tags = client.get_model_version(cfg.model_name, second.version).tags
    assert weak_tags["kfmlops.gate.evaluate.passed"] == "false"
    reasons = json.loads(weak_tags["kfmlops.gate.evaluate.reasons"])
    assert any("below champion v" + first.version in r for r in reasons)
    text = run_summary.render(run_summary.collect(cfg, second.version, seconds=second.seconds, steps=[],
                                                  run_dir=second.pipeline_root, logs=second.logs))
    assert "not promoted (evaluate gate failed)" in text and f"champion stays v{first.version}" in text


def test_data_that_breaks_the_suite_stops_the_pipeline_and_registers_nothing(home, capsys):
    lines = gzip.open(ROOT / "data" / "adult" / "adult.data.gz", "rt").read().splitlines(keepends=True)
    broken = [lines[0]] + [("-5" + line[line.index(","):]) if i % 10 == 0 else line for i, line in enumerate(lines[1:])]
    (home / "broken.csv").write_text("".join(broken))
    config = (ROOT / "pipelines" / "configs" / "adult.yaml").read_text()
    (home / "broken.yaml").write_text(config.replace("../../data/adult/adult.data.gz", "broken.csv")
                                      .replace("../../data", str(ROOT / "data")))
    assert main(["--config", str(home / "broken.yaml"), "--json"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["status"] == "failed" and summary["error"]["step"] == "validate"
    assert err.splitlines()[-1].startswith("kfmlops run failed at step validate: ")
    assert "Traceback" not in err
    assert aliases(DEMO.settings.mlflow) == {}
    root = Path(summary["paths"]["run_dir"])
    assert "Traceback" in Path(summary["error"]["log"]).read_text()
    results = json.loads((root / "validate" / "results").read_text())
    failed = [o for o in results["outcomes"] if not o["success"] and o["severity"] == "error"]
    assert any(o["column"] == "age" and o["type"] == "expect_column_values_to_be_between" for o in failed)
    assert not (root / "train").exists()


def test_a_residency_violation_is_refused_before_any_data_moves(home):
    config = _config()
    raw = config.settings.model_dump(mode="json", by_alias=True)
    raw["residency"] = {"allowed_regions": ["me-central-1"], "allowed_locations": ["s3://uae-data/"], "allow_local": False}
    config = config.model_copy(update={"settings": type(config.settings).parse(raw)})
    with pytest.raises(PipelineFailed, match="ingest") as err:
        run_pipeline(config.pipeline_arguments())
    assert err.value.step == "ingest" and err.value.reason.startswith("ResidencyError: ")
    root = err.value.run_dir
    assert not (root / "ingest" / "train_data").exists()
    assert aliases(config.settings.mlflow) == {}


def test_every_optional_parameter_can_be_left_out(home, capsys):
    """Only `data.source` and `data.label` given: no test_source, positive_labels, sensitive_features,
    settings, run_tags or backend options (kfp.local once crashed on an unset Optional[str]).
    Through `kfmlops run` as a person runs it: a progress line per step and the summary, no task logs."""
    frame = pd.read_csv(ROOT / "data" / "adult" / "adult.data.gz", skipinitialspace=True, nrows=3000)
    frame["income"] = (frame.pop("Y") == ">50K").astype(int)  # the default positive_labels: 1
    frame.to_csv(home / "small.csv", index=False)
    (home / "minimal.yaml").write_text("data: {source: small.csv, label: income}\n")
    assert main(["--config", str(home / "minimal.yaml")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) < 60
    steps = [line.split()[0] for line in printed if line.strip().endswith(" s") and "SUCCESS" in line]
    assert steps[:4] == ["ingest", "validate", "train", "evaluate"] and "register" in steps
    assert not any("HTTP Request" in line or "KFP Executor" in line for line in printed)

    summary = json.loads((home / "pipeline_root").glob("kfmlops-training-*/summary.json").__next__().read_text())
    cfg = Settings().mlflow
    mv = MlflowClient(tracking_uri(cfg)).get_model_version(cfg.model_name, summary["model"]["version"])
    assert mv.tags["kfmlops.train_data"] == str(home / "small.csv")
    assert aliases(cfg)["challenger"] == summary["model"]["version"]
    assert summary["status"] == "succeeded" and summary["fairness"] == []
    assert [s["name"] for s in summary["steps"]] == steps
    assert all(Path(s["log"]).is_file() for s in summary["steps"])
    assert "KFP Executor" in Path(summary["steps"][0]["log"]).read_text()  # the full log went to the file

"""The whole training pipeline through kfp.local, asserted on the MLflow registry and the artifacts:
Adult (binary, gbdt), penguins (multiclass, a user's scikit-learn trainer), cps1988 (regression, gbdt)
and a model trained outside kfmlops released through the same gates (bring your own model)."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
import mlflow
import mlflow.sklearn

from kfmlops.config import PipelineConfig, ProvenanceConfig, Settings
from kfmlops.provenance import PROVENANCE_FILE, verify, verify_key
from kfmlops import audit, run_summary
from kfmlops.local_run import PipelineFailed, main, run_pipeline
from kfmlops.register import aliases
from kfmlops.serving.predictor import resolve_model
from kfmlops.tracking import tracking_uri

pytestmark = pytest.mark.slow

CONFIGS = ROOT / "pipelines" / "configs"
DEMO = PipelineConfig.from_yaml(CONFIGS / "adult.yaml")


def _config(base: PipelineConfig = DEMO, **sections) -> PipelineConfig:
    raw = base.settings.model_dump(mode="json", by_alias=True)
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return base.model_copy(update={"settings": type(base.settings).parse(raw)})


def _summary(config: PipelineConfig, run) -> dict:
    return run_summary.collect(config.settings.mlflow, run.version, seconds=run.seconds, steps=[],
                               run_dir=run.pipeline_root, logs=run.logs)


def _tags(config: PipelineConfig, version: str) -> dict[str, str]:
    uri = tracking_uri(config.settings.mlflow)
    return MlflowClient(uri, uri).get_model_version(config.settings.mlflow.model_name, version).tags


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_pipeline_registers_a_gated_champion_then_keeps_it_from_a_weaker_model(home):
    good = DEMO  # the demo as `make demo` runs it: gbdt, the default trainer
    first = run_pipeline(good.pipeline_arguments())
    cfg = good.settings.mlflow
    uri = tracking_uri(cfg)
    client = MlflowClient(uri, uri)
    mv = client.get_model_version(cfg.model_name, first.version)
    tags = mv.tags
    assert tags["kfmlops.all_gates_passed"] == "true"
    assert len(tags["kfmlops.dataset_fingerprint"]) == 64
    assert tags["kfmlops.config_hash"] == good.settings.digest()
    assert tags["kfmlops.train_data"].endswith("adult.data.gz")
    assert tags["kfmlops.pipeline_run_id"] not in ("", "none")
    assert (tags["kfmlops.task"], tags["kfmlops.trainer"], tags["kfmlops.primary_metric"]) == ("binary", "gbdt", "roc_auc")
    assert json.loads(tags["kfmlops.classes"]) == ["<=50K", ">50K"]
    assert float(tags["kfmlops.metric.roc_auc"]) >= 0.92  # gbdt on Adult: 0.927 (benchmarks/README.md)
    assert aliases(cfg) == {"challenger": first.version, "champion": first.version}
    assert tags["kfmlops.deploy.status"] == "promoted"

    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert {"val_roc_auc", "test_roc_auc", "fairness.sex.equalized_odds_difference"} <= set(run.data.metrics)
    for step, output in [("validate", "report"), ("evaluate", "report"), ("fairness", "report"),
                         ("explain", "report"), ("predict", "predictions"), ("train", "model")]:
        assert (first.pipeline_root / step / output).exists(), f"{step}/{output} missing"
    assert (first.pipeline_root / "train" / "model" / "MLmodel").is_file()
    explanation = json.loads(Path(client.download_artifacts(mv.run_id, "explain/explanation.json", str(home)))
                             .read_text())  # in the run before the version was registered: the model card reads it
    assert explanation["metric"] == "roc_auc" and len(explanation["features"]) >= 10
    assert explanation["attributions"]["method"] == "shap-tree" and set(explanation["by_group"]) == {"sex", "race"}
    assert "explain.importance." + explanation["features"][0]["feature"] in run.data.metrics
    predictions = pd.read_parquet(first.pipeline_root / "predict" / "predictions")
    assert len(predictions) == 16281 and list(predictions.columns) == ["label", "prediction", "proba:<=50K", "proba:>50K"]
    local = resolve_model(f"models:/{cfg.model_name}@champion", uri, home / "dl").model_dir  # the signed files only
    record = verify(next(local.rglob(PROVENANCE_FILE)).parent, verify_key(ProvenanceConfig()))
    assert record.dataset_fingerprint == tags["kfmlops.dataset_fingerprint"]
    assert {"evaluate", "fairness"} == set(record.gates)
    card = Path(mlflow.artifacts.download_artifacts(artifact_uri=tags["kfmlops.card"], tracking_uri=uri,
                                                    dst_path=str(home / "card"))).read_text()  # attached at register
    assert "| evaluate | PASS |" in card and "| fairness | PASS |" in card and "| signature | verified |" in card
    assert good.settings.model_card.intended_use in card
    summary = _summary(good, first)
    assert summary["task"]["kind"] == "binary" and summary["metrics"]["primary"] == "roc_auc"
    assert summary["metrics"]["candidate"]["roc_auc"] > summary["metrics"]["reference"]["roc_auc"] > 0.5
    assert summary["metrics"]["baseline"]["roc_auc"] == 0.5 and summary["metrics"]["champion"] is None

    weak = _config(train={"gbdt": {"max_rounds": 3, "max_depth": 1},
                          "exclude_features": ["education", "education_num", "occupation", "capital_gain",
                                               "capital_loss", "relationship", "marital_status"]})
    second = run_pipeline(weak.pipeline_arguments())
    assert second.version != first.version
    assert aliases(cfg) == {"challenger": second.version, "champion": first.version}
    weak_tags = client.get_model_version(cfg.model_name, second.version).tags
    assert weak_tags["kfmlops.gate.evaluate.passed"] == "false"
    reasons = json.loads(weak_tags["kfmlops.gate.evaluate.reasons"])
    assert any(f"below champion v{first.version}" in r and r.startswith("failed") for r in reasons)
    summary = _summary(weak, second)
    assert summary["metrics"]["champion_version"] == first.version
    assert summary["metrics"]["champion"]["roc_auc"] == pytest.approx(float(tags["kfmlops.metric.roc_auc"]), abs=1e-6)
    text = run_summary.render(summary)
    assert "not promoted (evaluate gate failed)" in text and f"champion stays v{first.version}" in text

    log = audit.log_path(good.settings.audit, cfg.model_name)  # the promotion and the rollout, signed; nothing for v2
    assert [(r.event, r.version) for r in audit.read_log(log)] == [("alias_moved", first.version), ("deployed", first.version)]
    assert audit.verify(log, verify_key(ProvenanceConfig())).ok


def test_a_multiclass_label_trains_with_the_users_own_fit_function(home, monkeypatch):
    """Penguins (three species) through `train.trainer: "examples.sklearn_trainer:fit"`: the user's
    scikit-learn pipeline goes through the multiclass gates, fairness by sex, and is served."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # where each step's process imports examples.sklearn_trainer
    config = _config(PipelineConfig.from_yaml(CONFIGS / "penguins.yaml"), train={"trainer": "examples.sklearn_trainer:fit"})
    run = run_pipeline(config.pipeline_arguments())
    tags = _tags(config, run.version)
    assert (tags["kfmlops.task"], tags["kfmlops.trainer"], tags["kfmlops.primary_metric"]) == (
        "multiclass", "examples.sklearn_trainer:fit", "macro_f1")
    assert json.loads(tags["kfmlops.classes"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert float(tags["kfmlops.metric.macro_f1"]) >= 0.95 and tags["kfmlops.deploy.status"] == "promoted"
    summary = _summary(config, run)
    assert summary["task"]["reason"] and summary["model"]["promoted"]
    assert len(summary["metrics"]["confusion_matrix"]) == 3
    assert sum(map(sum, summary["metrics"]["confusion_matrix"])) == summary["data"]["test_rows"]
    (sex,) = summary["fairness"]
    assert [c["figure"] for c in sex["checks"]] == ["accuracy_difference"]
    assert {"accuracy", "selection_rate:Adelie"} <= set(sex["by_group"][0])
    assert "accuracy_difference" in run_summary.render(summary)


def test_a_regression_label_trains_gbdt_and_gates_on_rmse(home):
    config = PipelineConfig.from_yaml(CONFIGS / "cps1988.yaml")
    run = run_pipeline(config.pipeline_arguments())
    tags = _tags(config, run.version)
    assert (tags["kfmlops.task"], tags["kfmlops.trainer"], tags["kfmlops.primary_metric"]) == ("regression", "gbdt", "rmse")
    summary = _summary(config, run)
    metrics = summary["metrics"]
    assert metrics["candidate"]["rmse"] < metrics["reference"]["rmse"] < metrics["baseline"]["rmse"]
    assert 0.2 < metrics["candidate"]["r2"] < 1 and metrics["confusion_matrix"] is None  # wage in dollars: R² 0.23
    (ethnicity,) = summary["fairness"]
    assert {c["figure"] for c in ethnicity["checks"]} == {"mae_ratio", "mean_prediction_difference"}
    assert {"mae", "mean_prediction", "mean_label"} <= set(ethnicity["by_group"][0])
    assert summary["model"]["promoted"] and tags["kfmlops.deploy.status"] == "promoted"


def test_a_model_trained_elsewhere_is_released_through_the_same_gates(home, tmp_path):
    """A plain `mlflow.sklearn` model with no kfmlops metadata (`kfmlops run --model-uri`): imported,
    scored, judged, registered and deployed like one of ours."""
    from mlflow.models import infer_signature
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.read_csv(ROOT / "data" / "penguins" / "penguins.csv.gz")  # with its gaps: the signature allows them
    x, y = frame.drop(columns=["species"]), frame["species"]
    categorical = ["island", "sex"]
    encode = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    model = make_pipeline(
        make_column_transformer((encode, categorical), remainder=SimpleImputer()),
        RandomForestClassifier(n_estimators=50, random_state=0),
    ).fit(x, y)
    # MLflow saves scikit-learn models with skops: the tree types this model holds must be trusted by name
    mlflow.sklearn.save_model(model, tmp_path / "forest", signature=infer_signature(x, model.predict(x)),
                              skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"])

    config = PipelineConfig.from_yaml(CONFIGS / "penguins.yaml")
    assert main(["--config", str(CONFIGS / "penguins.yaml"), "--model-uri", str(tmp_path / "forest"), "--json"]) == 0
    summary = json.loads((home / "pipeline_root").glob("kfmlops-bring-your-own-model-*/summary.json").__next__().read_text())
    tags = _tags(config, summary["model"]["version"])
    assert (tags["kfmlops.task"], tags["kfmlops.trainer"]) == ("multiclass", "imported")
    assert [s["name"] for s in summary["steps"]][:4] == ["ingest", "validate", "import-model", "predict"]
    assert summary["metrics"]["candidate"]["accuracy"] > 0.9 and summary["model"]["promoted"]


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


def test_a_metric_of_another_task_stops_the_run_at_ingest(home):
    """cps1988's label is a wage (regression): a ROC AUC limit is refused once ingest knows the task,
    before anything is trained."""
    config = _config(PipelineConfig.from_yaml(CONFIGS / "cps1988.yaml"), evaluate={"limits": {"roc_auc": 0.8}})
    with pytest.raises(PipelineFailed, match="ingest") as err:
        run_pipeline(config.pipeline_arguments())
    assert err.value.reason.startswith("EvaluateConfigError: evaluate.limits names ['roc_auc'], not regression metrics")
    assert not (err.value.run_dir / "train").exists()


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
    assert steps[:5] == ["ingest", "validate", "tune", "train", "predict"]
    assert {"evaluate", "fairness", "explain", "register", "promote", "deploy"} <= set(steps)
    assert not any("HTTP Request" in line or "KFP Executor" in line for line in printed)

    summary = json.loads((home / "pipeline_root").glob("kfmlops-training-*/summary.json").__next__().read_text())
    cfg = Settings().mlflow
    mv = MlflowClient(tracking_uri(cfg), tracking_uri(cfg)).get_model_version(cfg.model_name, summary["model"]["version"])
    assert mv.tags["kfmlops.train_data"] == str(home / "small.csv")
    assert aliases(cfg)["challenger"] == summary["model"]["version"]
    assert summary["status"] == "succeeded" and summary["fairness"] == []
    assert summary["task"]["kind"] == "binary" and summary["task"]["classes"] == ["0", "1"]
    assert [s["name"] for s in summary["steps"]] == steps
    assert all(Path(s["log"]).is_file() for s in summary["steps"])
    assert "KFP Executor" in Path(summary["steps"][0]["log"]).read_text()  # the full log went to the file


def test_a_required_approval_holds_promotion_and_deploy_until_someone_else_approves(home):
    """Penguins with governance.require_approval: the run ends with the candidate waiting (no champion,
    nothing deployed); the starter may not approve it; another person's `kfmlops approve` moves
    champion and deploys it through the same validation and canary; the audit log holds it all."""
    from kfmlops import approval
    from kfmlops.audit import actor

    config = _config(PipelineConfig.from_yaml(CONFIGS / "penguins.yaml"), governance={"require_approval": True})
    cfg = config.settings.mlflow
    run = run_pipeline(config.pipeline_arguments())
    assert aliases(cfg) == {"challenger": run.version}
    tags = _tags(config, run.version)
    assert tags["kfmlops.all_gates_passed"] == "true" and "kfmlops.deploy.status" not in tags
    assert tags[approval.STATUS_TAG] == "pending" and tags["kfmlops.approval.started_by"] == actor()
    assert "waits for approval" in run_summary.render(_summary(config, run))

    config_file = home / "config.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json", by_alias=True, exclude_defaults=True)))
    base = [cfg.model_name, run.version, "--config", str(config_file), "--reason", "card reviewed", "--json"]
    assert approval.approve_main([*base, "--by", actor()]) == 1  # four-eyes
    assert aliases(cfg) == {"challenger": run.version}
    assert approval.approve_main([*base, "--by", "reviewer@example.com"]) == 0
    assert aliases(cfg) == {"challenger": run.version, "champion": run.version}
    tags = _tags(config, run.version)
    assert (tags[approval.STATUS_TAG], tags["kfmlops.deploy.status"]) == ("approved", "promoted")
    log = audit.log_path(config.settings.audit, cfg.model_name)
    assert [(r.event, r.actor) for r in audit.read_log(log)] == [
        ("approval_requested", actor()), ("approved", "reviewer@example.com"),
        ("alias_moved", "reviewer@example.com"), ("deployed", "reviewer@example.com")]
    assert audit.verify(log, verify_key(ProvenanceConfig()), audit.registry_head(cfg, cfg.model_name)).ok
    card = mlflow.artifacts.load_text(tags["kfmlops.card"])  # refreshed after the decision and the deploy
    assert "reviewer@example.com" in card and "card reviewed" in card

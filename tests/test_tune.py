"""Hyperparameter tuning: the search space is checked at config load, a small real search (through
``kfmlops tune``) never ends worse on validation than the configured settings, the search never
sees the test split, every trial is an MLflow child run, the pruner prunes, each task's metric has
its direction, and the Katib Experiment matches its schema. Searches are tiny: 2,000 Adult rows,
gbdt with at most 60 rounds, one thread per trial."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.model_selection import train_test_split

from conftest import ADULT, ROOT
from schemas import crd_errors, katib_webhook_errors, validate_crd

from kfmlops.config import DataSpec, MlflowConfig, PipelineConfig, Settings, TrainConfig, TuningConfig
from kfmlops.katib import katib_experiment
from kfmlops.tasks import Task
from kfmlops.train import fit_frame
from kfmlops.tune import TrialRecord, _result, direction, trial_config, trial_threads, tune
from kfmlops.tune_cli import main as tune_cli
from kfmlops.typed import ConfigError

SPACE = {"gbdt.learning_rate": {"type": "float", "low": 0.02, "high": 0.5, "log": True},
         "gbdt.max_depth": {"type": "int", "low": 2, "high": 8}}
FAST = {"gbdt": {"max_rounds": 60, "early_stopping_rounds": 10, "learning_rate": 0.05}}


def _settings(tuning: dict, train: dict | None = None) -> Settings:
    return Settings.parse({"train": train or FAST, "tuning": tuning})


@pytest.mark.parametrize("space, message", [
    ({"gbdt.learning_rat": {"type": "float", "low": 0.01, "high": 0.3}},
     "'gbdt.learning_rat' is not a train setting: there is no train.gbdt.learning_rat"),
    ({"gbdt": {"type": "float", "low": 0.01, "high": 0.3}}, "'gbdt' is a section of train settings, not a setting"),
    ({"gbdt.learning_rate": {"type": "float", "low": 0.0, "high": 0.3}},
     "'gbdt.learning_rate': 0.0 (in the space) is not a valid train.gbdt.learning_rate: Input should be greater than 0"),
    ({"gbdt.max_depth": {"type": "float", "low": 2, "high": 7}}, "'gbdt.max_depth': 4.5 (in the space) is not a valid"),
    ({"trainer": {"type": "categorical", "choices": ["gbdt", "xgb"]}}, "'trainer': 'xgb' (in the space) is not a valid"),
    ({"gbdt.max_depth": {"type": "int", "low": 8, "high": 2}}, "low (8) must be below high (2)"),
    ({"gbdt.learning_rate": {"type": "float", "low": 0.1, "high": 0.3}},
     "the configured train.gbdt.learning_rate (0.05) is not in the space (float 0.1 to 0.3)"),
    ({"gbdt.max_depth": {"type": "int", "low": 2, "high": 10, "step": 3}},
     "the configured train.gbdt.max_depth (6) is not in the space (int 2 to 10 step 3)"),
    ({}, "n_trials is 4 but the search space is empty"),
])
def test_a_bad_search_space_fails_at_config_load_naming_the_path(space, message):
    with pytest.raises(ConfigError) as err:
        Settings.parse({"tuning": {"n_trials": 4, "space": space}})
    assert message in str(err.value)


def test_any_train_setting_is_a_path_the_trainer_and_user_params_included():
    settings = Settings.parse({"train": {"params": {"C": 1.0}}, "tuning": {"n_trials": 4, "space": {
        "trainer": {"type": "categorical", "choices": ["gbdt", "tabular-net"]},
        "hidden_units": {"type": "categorical", "choices": [[128, 64], [32]]},
        "params.C": {"type": "float", "low": 0.01, "high": 10, "log": True}}}})
    assert set(settings.tuning.space) == {"trainer", "hidden_units", "params.C"}
    assert settings.digest() == Settings.parse({"train": {"params": {"C": 1.0}}}).digest()  # lineage hashes the train settings


def test_each_tasks_validation_metric_has_its_direction():
    assert (direction("binary"), direction("multiclass"), direction("regression")) == ("maximize", "minimize", "minimize")
    trials = [TrialRecord(0, "complete", 5.0, {"gbdt.max_depth": 6}, 1.0), TrialRecord(1, "complete", 3.0, {"gbdt.max_depth": 3}, 1.0),
              TrialRecord(2, "pruned", None, {"gbdt.max_depth": 2}, 1.0), TrialRecord(3, "complete", 7.0, {"gbdt.max_depth": 8}, 1.0)]
    tuning = TuningConfig(n_trials=4, space={"gbdt.max_depth": {"type": "int", "low": 2, "high": 8}})
    for kind, classes, best in [("regression", (), 1), ("multiclass", ("a", "b", "c"), 1), ("binary", ("n", "p"), 3)]:
        result = _result(trials, Task(kind, "y", classes), tuning, 1, 1.0, None)
        assert result.best_trial == best and result.default_value == 5.0, kind


@pytest.fixture(scope="module")
def adult_2k_csv(tmp_path_factory):
    """2,000 raw Adult rows as CSV (stratified, seeded): the data of a small config."""
    raw = pd.read_csv(ADULT / "adult.data.gz", skipinitialspace=True)
    sample, _ = train_test_split(raw, train_size=2000, stratify=raw["Y"], random_state=0)
    path = tmp_path_factory.mktemp("tune-data") / "adult-2k.csv"
    sample.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def searched(adult_2k_csv, tmp_path_factory):
    """``kfmlops tune --json`` on a config of the 2,000 rows: 6 trials, 2 workers, MLflow in tmp."""
    folder = tmp_path_factory.mktemp("tune-run")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    config = {"data": {"source": str(adult_2k_csv), "label": "Y", "positive_labels": [">50K"]},
              "ingest": {"format": "csv", "na_values": ["?"]}, "train": FAST,
              "tuning": {"n_trials": 2, "parallelism": 1, "space": SPACE, "pruner": False, "seed": 3},
              "mlflow": {"tracking_uri": store, "experiment": "tune-tests"}}
    (folder / "tune.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KFMLOPS_HOME", str(folder / "home"))
        out = folder / "run"
        assert tune_cli(["--config", str(folder / "tune.yaml"), "--trials", "6", "--parallelism", "2", "--json",
                         "--out", str(out)]) == 0
    return folder, json.loads((out / "summary.json").read_text()), store


def test_a_small_search_is_never_worse_than_the_configured_settings_on_validation(searched):
    folder, summary, _ = searched
    result = summary["result"]
    assert (result["n_trials"], result["parallelism"], len(result["trials"])) == (6, 2, 6)
    trial0 = result["trials"][0]
    assert trial0["number"] == 0 and trial0["params"] == {"gbdt.learning_rate": 0.05, "gbdt.max_depth": 6}
    assert result["default_value"] == trial0["value"]
    assert result["best_value"] >= result["default_value"]  # roc_auc: higher is better
    assert max(t["value"] for t in result["trials"] if t["value"] is not None) == result["best_value"]
    assert summary["tuned_train_settings"]["gbdt"]["max_depth"] == result["best_params"]["gbdt.max_depth"]
    # trial 0 is the configured settings, trained as train would train them (one thread, as in a worker)
    frame = pd.read_parquet(summary["paths"]["train_split"])
    task = Task("binary", "y", ("<=50K", ">50K"))
    config = trial_config(TrainConfig.model_validate(FAST), trial0["params"], trial_threads(2))
    direct = fit_frame(frame, task, config, folder / "direct")
    assert direct.val_score == pytest.approx(trial0["value"], abs=1e-9)
    assert (folder / "run" / "tune.log").read_text().count("tune: trial") >= 6


def test_every_trial_is_a_child_run_of_the_search_with_its_params(searched):
    _, summary, store = searched
    client = MlflowClient(store)
    parent = client.get_run(summary["result"]["run_id"])
    assert parent.data.tags["kfmlops.tuning.best_trial"] == str(summary["result"]["best_trial"])
    assert parent.data.params["tuning.n_trials"] == "6" and "gbdt.learning_rate" in parent.data.params["tuning.space"]
    assert parent.data.metrics["best_val_roc_auc"] == pytest.approx(summary["result"]["best_value"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == [f"trial-{n}" for n in range(6)]
    by_number = {int(r.data.tags["kfmlops.tuning.trial"]): r for r in children}
    for trial in summary["result"]["trials"]:
        run = by_number[trial["number"]]
        assert float(run.data.params["gbdt.learning_rate"]) == pytest.approx(trial["params"]["gbdt.learning_rate"])
        assert run.data.metrics["val_roc_auc"] == pytest.approx(trial["value"])
        assert run.info.status == "FINISHED"


def test_the_search_never_sees_the_test_split():
    """The tune step's only data input is the train split (the compiled pipeline), and tune() takes
    one path: there is no way for a trial to score on the test split."""
    import inspect

    pipeline = next(yaml.safe_load_all((ROOT / "pipelines" / "training.yaml").read_text()))
    (task,) = [t for t in pipeline["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "tune"]
    assert set(task["inputs"]["artifacts"]) == {"train_data"}
    assert task["inputs"]["artifacts"]["train_data"]["taskOutputArtifact"]["outputArtifactKey"] == "train_data"
    assert [p for p in inspect.signature(tune).parameters if "test" in p or "data" in p] == []


def test_the_pruner_stops_trials_that_trail_the_configured_settings(adult_train, tmp_path):
    """A learning rate of 1e-4 is far behind 0.3 after 10 rounds: the median pruner stops it."""
    small, _ = train_test_split(adult_train, train_size=2000, stratify=adult_train["y"], random_state=0)
    small.to_parquet(tmp_path / "train.parquet")
    settings = _settings({"n_trials": 4, "parallelism": 1, "pruner_startup_trials": 1, "pruner_warmup_steps": 0,
                          "seed": 0, "space": {"gbdt.learning_rate": {"type": "categorical", "choices": [0.3, 1e-4]}}},
                         {"gbdt": {"max_rounds": 60, "early_stopping_rounds": 10, "learning_rate": 0.3}})
    result = tune(tmp_path / "train.parquet", Task("binary", "y", ("<=50K", ">50K")), settings.train, settings.tuning)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned and all(t.params["gbdt.learning_rate"] == 1e-4 for t in pruned)
    assert all(t.steps[-1][0] == 10 for t in pruned)  # stopped at the first report after the warm-up
    assert result.trials[0].state == "complete" and result.best_params == {"gbdt.learning_rate": 0.3}


def test_report_stops_both_bundle_trainers(adult_train, tmp_path):
    small, _ = train_test_split(adult_train, train_size=1000, stratify=adult_train["y"], random_state=0)
    task = Task("binary", "y", ("<=50K", ">50K"))
    seen = {}

    def stop_at(step):
        def report(at, value):
            seen.setdefault(len(seen), (at, value))
            return at >= step
        return report

    boosted = fit_frame(small, task, TrainConfig.model_validate({"gbdt": {"threads": 1}}), tmp_path / "gbdt",
                        report=stop_at(20))
    assert boosted.iterations == 21 and [s for s, _ in seen.values()] == [0, 10, 20]
    assert 0.5 < seen[2][1] <= 1.0  # the round's validation ROC AUC
    seen.clear()
    net = fit_frame(small, task, TrainConfig(trainer="tabular-net", cpu_threads=1, min_steps=0), tmp_path / "net",
                    report=stop_at(1))
    assert net.iterations == 2 and [s for s, _ in seen.values()] == [0, 1]


def _experiment(**tuning):
    settings = _settings({"n_trials": 12, "parallelism": 3, "space": {
        **SPACE, "trainer": {"type": "categorical", "choices": ["gbdt", "tabular-net"]},
        "hidden_units": {"type": "categorical", "choices": [[128, 64], [32]]}}, **tuning})
    return katib_experiment(DataSpec(source="s3://bucket/adult.csv", label="Y"), settings, "binary", name="adult-tune")


def test_the_katib_experiment_matches_its_schema_and_the_webhook_rules():
    experiment = _experiment()
    validate_crd(experiment)
    assert katib_webhook_errors(experiment) == []
    spec = experiment["spec"]
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "val_roc_auc",
                                 "metricStrategies": [{"name": "val_roc_auc", "value": "latest"}]}
    assert spec["algorithm"]["algorithmName"] == "tpe" and spec["earlyStopping"]["algorithmName"] == "medianstop"
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["metricsCollectorSpec"]["collector"]["kind"]) == \
        (12, 3, "StdOut")
    assert {p["name"]: p["parameterType"] for p in spec["parameters"]} == {
        "gbdt-learning_rate": "double", "gbdt-max_depth": "int", "trainer": "categorical", "hidden_units": "categorical"}
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["python", "-m", "kfmlops.tune", "trial"]
    assert "gbdt.learning_rate=${trialParameters.gbdt-learning_rate}" in command
    assert "earlyStopping" not in _experiment(pruner=False)["spec"]
    regression = katib_experiment(DataSpec(source="s3://b/c.csv", label="wage"), _settings({"n_trials": 2, "space": SPACE}),
                                  "regression", name="cps")
    assert regression["spec"]["objective"]["type"] == "minimize"
    assert regression["spec"]["objective"]["objectiveMetricName"] == "val_rmse"


def test_a_broken_katib_experiment_fails_validation():
    broken = copy.deepcopy(_experiment())
    broken["spec"]["objective"]["type"] = "maximise"
    broken["spec"]["parameters"][0]["feasibleSpace"]["minimum"] = "0.1"
    del broken["spec"]["trialTemplate"]["primaryContainerName"]
    errors = crd_errors(broken)
    assert any("objective.type: 'maximise' is not one of" in e for e in errors)
    assert any("'minimum' was unexpected" in e for e in errors)
    assert any("'primaryContainerName' is a required property" in e for e in errors)
    unwired = copy.deepcopy(_experiment())
    unwired["spec"]["trialTemplate"]["trialParameters"].pop()
    unwired["spec"]["parallelTrialCount"] = 20
    assert katib_webhook_errors(unwired) == [
        "spec.parallelTrialCount: should be less than or equal to spec.maxTrialCount",
        "spec.trialTemplate: ${trialParameters.hidden_units} is used but not declared"]


def test_emit_katib_writes_the_experiment_of_a_config(tmp_path, capsys):
    out = tmp_path / "experiment.yaml"
    assert tune_cli(["--config", str(ROOT / "pipelines" / "configs" / "cps1988.yaml"), "--trials", "20",
                     "--emit-katib", str(out), "--name", "cps-tune"]) == 0
    experiment = yaml.safe_load(out.read_text())
    validate_crd(experiment)
    assert experiment["metadata"]["name"] == "cps-tune" and experiment["spec"]["objective"]["type"] == "minimize"
    assert "Katib Experiment kubeflow/cps-tune (20 trials, 6 parameters)" in capsys.readouterr().out


def test_the_trial_entry_prints_metric_lines_for_katib(adult_2k_csv, capsys):
    from kfmlops.tune import trial_main

    data = {"source": str(adult_2k_csv), "label": "Y", "positive_labels": [">50K"]}
    settings = {"ingest": {"format": "csv", "na_values": ["?"]}, "train": {"gbdt": {"threads": 1, **FAST["gbdt"]}}}
    assert trial_main(["--data", json.dumps(data), "--settings", json.dumps(settings),
                       "--set", "gbdt.max_depth=3", "--set", "gbdt.learning_rate=0.2"]) == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) >= 2 and all(line.startswith("val_roc_auc=") for line in lines)
    assert 0.8 < float(lines[-1].split("=")[1]) <= 1.0


@pytest.mark.slow
def test_a_pipeline_run_with_tuning_trains_and_registers_the_best_settings(tmp_path, monkeypatch):
    from kfmlops.local_run import run_pipeline
    from kfmlops.tracking import tracking_uri

    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    demo = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")
    raw = demo.settings.model_dump(mode="json", by_alias=True)
    raw["train"]["gbdt"] |= {"max_rounds": 150, "learning_rate": 0.1}
    raw["tuning"] = {"n_trials": 3, "parallelism": 2, "seed": 1, "space": {
        "gbdt.learning_rate": {"type": "float", "low": 0.05, "high": 0.4, "log": True},
        "gbdt.max_depth": {"type": "int", "low": 3, "high": 8}}}
    config = demo.model_copy(update={"settings": Settings.parse(raw)})
    run = run_pipeline(config.pipeline_arguments())
    uri = tracking_uri(config.settings.mlflow)
    client = MlflowClient(uri, uri)
    tags = client.get_model_version(config.settings.mlflow.model_name, run.version).tags
    assert tags["kfmlops.tuning.n_trials"] == "3"
    assert tags["kfmlops.tuning.space_digest"] and tags["kfmlops.tuning.best_trial"] in {"0", "1", "2"}
    best = json.loads(tags["kfmlops.tuning.best_params"])
    version = client.get_model_version(config.settings.mlflow.model_name, run.version)
    pipeline_run = client.get_run(version.run_id)
    assert f"'learning_rate': {best['gbdt.learning_rate']}" in pipeline_run.data.params["train.gbdt"]
    assert f"'max_depth': {best['gbdt.max_depth']}" in pipeline_run.data.params["train.gbdt"]
    search = client.get_run(tags["kfmlops.tuning.run_id"])
    assert search.data.tags["mlflow.parentRunId"] == version.run_id
    assert float(tags["kfmlops.tuning.best_value"]) >= float(tags["kfmlops.tuning.default_value"])

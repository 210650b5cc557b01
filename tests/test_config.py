from pathlib import Path

import pytest

from kfmlops.config import ModelCardConfig, PipelineConfig, Settings
from kfmlops.typed import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads_with_paths_relative_to_the_file():
    config = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")
    assert config.data.source == str(ROOT / "data" / "adult" / "adult.data.gz")
    assert config.settings.fairness.min_group_size == 500
    assert config.settings.validate_.expectations[0].kwargs["column"] == "age"


def test_pipeline_parameter_round_trips_and_holds_no_nulls():
    settings = Settings.parse({"fairness": {"max_equalized_odds_difference": 0.1}, "train": {"epochs": 3}})
    parameter = settings.to_parameter()
    assert parameter == {"train": {"epochs": 3}, "fairness": {"max_equalized_odds_difference": 0.1}}
    assert Settings.parse(parameter) == settings
    assert "null" not in str(Settings().to_parameter())


def test_bad_setting_names_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: x.csv, label: y}\ntrain: {epochs: 0, learning_rat: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_yaml(path)
    assert "train.epochs" in str(err.value) and "train.learning_rat" in str(err.value)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PipelineConfig.from_yaml(tmp_path / "bad.yaml")


def test_digest_changes_with_any_setting():
    assert Settings().digest() != Settings.parse({"train": {"seed": 7}}).digest()
    assert Settings().digest() == Settings.parse({}).digest()


def test_digest_ignores_where_runs_are_recorded_and_number_spelling():
    base = Settings.parse({"validate": {"expectations": [{"type": "expect_x", "kwargs": {"min_value": 16}}]}})
    as_kfp_sends_it = Settings.parse({"validate": {"expectations": [{"type": "expect_x", "kwargs": {"min_value": 16.0}}]},
                                      "mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})
    assert base.digest() == as_kfp_sends_it.digest()
    carded = base.model_copy(update={"model_card": ModelCardConfig(intended_use="credit triage", limitations="US only")})
    assert carded.digest() == base.digest()  # what the card says the model is for does not change the model


def test_fairness_thresholds_without_sensitive_features_are_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: x.csv, label: y}\nfairness: {max_equalized_odds_difference: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_yaml(path)
    assert "fairness thresholds ['max_equalized_odds_difference'] are set but data.sensitive_features is empty" in str(err.value)
    path.write_text("data: {source: x.csv, label: y, sensitive_features: [sex]}\nfairness: {max_equalized_odds_difference: 0.1}\n")
    assert PipelineConfig.from_yaml(path).data.sensitive_features == ["sex"]
    path.write_text("data: {source: x.csv, label: y}\nfairness: {min_group_size: 10}\n")
    assert PipelineConfig.from_yaml(path).settings.fairness.min_group_size == 10


def test_a_label_value_in_both_classes_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: x.csv, label: y, positive_labels: [hi], negative_labels: [lo, hi]}\n")
    with pytest.raises(ConfigError, match=r"negative_labels and positive_labels both hold \[.hi.\]"):
        PipelineConfig.from_yaml(path)

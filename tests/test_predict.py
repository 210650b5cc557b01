"""Predict: any MLflow model scores a split into the predictions dataset, batch by batch, in memory and
Parquet to Parquet, and the KFP component writes it with its metadata."""

from __future__ import annotations

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from kfp import dsl
from sklearn.linear_model import LogisticRegression, Ridge

from kfmlops import model_contract
from kfmlops.components.predict import predict as predict_component
from kfmlops.model_contract import ModelContractError, ModelInfo
from kfmlops.predict import predict, predict_file
from kfmlops.tasks import Task

PENGUINS = Task("multiclass", "species", ("Adelie", "Chinstrap", "Gentoo"))
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm"]


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    frame = pd.read_csv("data/penguins/penguins.csv.gz").dropna()
    return frame[["species", *FEATURES]].reset_index(drop=True)


@pytest.fixture(scope="module")
def penguin_model(penguins, tmp_path_factory):
    """A LogisticRegression on class names, saved with kfmlops metadata; and the estimator."""
    model = LogisticRegression(max_iter=2000).fit(penguins[FEATURES], penguins["species"])
    out = tmp_path_factory.mktemp("penguin-model") / "model"
    model_contract.save_estimator(model, out, ModelInfo(PENGUINS, FEATURES, "user"), penguins[FEATURES])
    return out, model


def test_predict_gives_the_predictions_dataset_in_row_order_whatever_the_batch(penguins, penguin_model):
    path, model = penguin_model
    frame = predict(path, penguins, PENGUINS)
    assert list(frame.columns) == ["label", "prediction", "proba:Adelie", "proba:Chinstrap", "proba:Gentoo"]
    assert frame["label"].tolist() == penguins["species"].tolist()
    assert frame["prediction"].tolist() == model.predict(penguins[FEATURES]).tolist()
    np.testing.assert_allclose(model_contract.scores_of(frame, PENGUINS), model.predict_proba(penguins[FEATURES]))
    for batch_rows in (1, 7, 10_000):
        pd.testing.assert_frame_equal(predict(path, penguins, PENGUINS, batch_rows=batch_rows), frame)
    unlabelled = predict(path, penguins.drop(columns=["species"]), PENGUINS)
    assert "label" not in unlabelled.columns and len(unlabelled) == len(penguins)
    with pytest.raises(ValueError, match="batch_rows must be at least 1"):
        predict(path, penguins, PENGUINS, batch_rows=0)


def test_the_model_never_sees_the_label(penguins, tmp_path):
    """A model without metadata or signature is given every column but the label."""
    model = LogisticRegression(max_iter=2000).fit(penguins[FEATURES], PENGUINS.encode(penguins["species"]))
    mlflow.sklearn.save_model(model, str(tmp_path / "bare"), pip_requirements=[])
    frame = predict(tmp_path / "bare", penguins, PENGUINS)
    np.testing.assert_allclose(model_contract.scores_of(frame, PENGUINS), model.predict_proba(penguins[FEATURES]))


def test_binary_threshold_and_regression_values(penguins, tmp_path):
    task = Task("binary", "is_gentoo", ("other", "gentoo"))
    data = penguins[FEATURES].assign(is_gentoo=np.where(penguins["species"] == "Gentoo", "gentoo", "other"))
    classifier = LogisticRegression(max_iter=2000).fit(data[FEATURES[:1]], data["is_gentoo"])
    model_contract.save_estimator(classifier, tmp_path / "b", ModelInfo(task, FEATURES[:1], "user"), data)
    for threshold in (0.2, 0.5, 0.8):
        frame = predict(tmp_path / "b", data, task, threshold)
        positive = frame["proba:gentoo"] >= threshold
        assert (frame["prediction"] == np.where(positive, "gentoo", "other")).all() and 0 < positive.sum() < len(data)

    wage = Task("regression", "flipper_length_mm")
    regressor = Ridge().fit(penguins[FEATURES[:2]], penguins["flipper_length_mm"])
    model_contract.save_estimator(regressor, tmp_path / "r", ModelInfo(wage, FEATURES[:2], "user"), penguins)
    frame = predict(tmp_path / "r", penguins, wage, batch_rows=50)
    assert list(frame.columns) == ["label", "prediction"] and frame["label"].dtype == np.float64
    np.testing.assert_allclose(frame["prediction"], regressor.predict(penguins[FEATURES[:2]]))


def test_a_model_of_another_task_is_refused(penguins, penguin_model):
    with pytest.raises(ModelContractError, match="trained for a multiclass task"):
        predict(penguin_model[0], penguins, Task("regression", "species"))


def test_predict_file_streams_parquet_to_parquet(penguins, penguin_model, tmp_path):
    path, _ = penguin_model
    penguins.to_parquet(tmp_path / "split.parquet", row_group_size=40)
    rows = predict_file(path, tmp_path / "split.parquet", tmp_path / "out.parquet", PENGUINS, batch_rows=25)
    assert rows == len(penguins)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), predict(path, penguins, PENGUINS))

    penguins.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    assert predict_file(path, tmp_path / "empty.parquet", tmp_path / "none.parquet", PENGUINS) == 0
    empty = pd.read_parquet(tmp_path / "none.parquet")
    assert len(empty) == 0 and list(empty.columns) == PENGUINS.prediction_columns()


def test_the_component_writes_the_dataset_and_its_metadata(penguins, penguin_model, tmp_path, mlflow_store):
    from kfmlops.tracking import start_run

    penguins.to_parquet(tmp_path / "test.parquet")
    out = dsl.Dataset(name="predictions", uri=str(tmp_path / "predictions"), metadata={})
    settings = {"mlflow": mlflow_store.model_dump(), "evaluate": {"decision_threshold": 0.5}}
    predict_component.python_func(
        model=dsl.Model(name="model", uri=str(penguin_model[0]), metadata={}),
        data=dsl.Dataset(name="test_data", uri=str(tmp_path / "test.parquet"), metadata={}),
        task=PENGUINS.to_json(), settings=settings, run_id=start_run(mlflow_store, "predict", {}), predictions=out,
    )
    assert out.metadata == {"rows": len(penguins), "task": "multiclass", "format": "parquet"}
    pd.testing.assert_frame_equal(pd.read_parquet(out.path), predict(penguin_model[0], penguins, PENGUINS))

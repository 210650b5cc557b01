"""The Model artifact contract: any MLflow model scores into the task's shape, and import checks it."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from kfmlops import model_contract
from kfmlops.import_model import import_model
from kfmlops.model_contract import ModelContractError, ModelInfo
from kfmlops.tasks import Task

PENGUINS = Task("multiclass", "species", ("Adelie", "Chinstrap", "Gentoo"))
BINARY = Task("binary", "y", ("no", "yes"))


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    frame = pd.read_csv("data/penguins/penguins.csv.gz").dropna()
    return frame[["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "species"]].reset_index(drop=True)


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["species"])


def test_an_sklearn_model_with_class_names_scores_in_the_tasks_class_order(tmp_path, penguins):
    model = LogisticRegression(max_iter=2000).fit(_features(penguins), penguins["species"])
    # the task lists the classes in another order than the model's classes_
    task = Task("multiclass", "species", ("Gentoo", "Adelie", "Chinstrap"))
    info = ModelInfo(task, list(_features(penguins).columns), "user")
    model_contract.save_estimator(model, tmp_path / "m", info, _features(penguins))
    loaded = model_contract.load(tmp_path / "m")
    scores = loaded.scores(penguins)
    expected = model.predict_proba(_features(penguins))[:, [2, 0, 1]]
    np.testing.assert_allclose(scores, expected)
    frame = model_contract.predictions(task, scores, labels=penguins["species"])
    assert list(frame.columns) == ["label", "prediction", "proba:Gentoo", "proba:Adelie", "proba:Chinstrap"]
    assert (frame["prediction"] == model.predict(_features(penguins))).all()
    np.testing.assert_allclose(model_contract.scores_of(frame, task), scores)


def test_a_model_trained_on_class_codes_and_one_without_metadata(tmp_path, penguins):
    codes = PENGUINS.encode(penguins["species"])
    model = LogisticRegression(max_iter=2000).fit(_features(penguins), codes)
    mlflow.sklearn.save_model(model, str(tmp_path / "bare"), pip_requirements=[])  # no kfmlops metadata: the data's task is needed
    with pytest.raises(ModelContractError, match="has no kfmlops metadata"):
        model_contract.load(tmp_path / "bare")
    loaded = model_contract.load(tmp_path / "bare", PENGUINS)
    np.testing.assert_allclose(loaded.scores(_features(penguins)), model.predict_proba(_features(penguins)))
    assert loaded.trainer == "imported"


def test_regression_and_a_pyfunc_that_returns_labels_or_probabilities(tmp_path, penguins):
    target = penguins["flipper_length_mm"].astype(float)
    x = penguins[["bill_length_mm", "bill_depth_mm"]]
    regression = Task("regression", "flipper_length_mm")
    model = LinearRegression().fit(x, target)
    model_contract.save_estimator(model, tmp_path / "r", ModelInfo(regression, list(x.columns), "user"), x)
    np.testing.assert_allclose(model_contract.load(tmp_path / "r").scores(x), model.predict(x))

    class Labels(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.where(model_input["bill_length_mm"] > 45, "yes", "no")

    class Probability(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return pd.Series(np.clip((model_input["bill_length_mm"] - 30) / 30, 0, 1))

    for name, python_model in (("labels", Labels()), ("probability", Probability())):
        mlflow.pyfunc.save_model(str(tmp_path / name), python_model=python_model, pip_requirements=[])
        model_contract.with_info(tmp_path / name, ModelInfo(BINARY, ["bill_length_mm"], "user"))
    hard = model_contract.load(tmp_path / "labels").scores(penguins)
    assert set(hard[:, 1]) == {0.0, 1.0} and (hard.sum(axis=1) == 1).all()
    soft = model_contract.load(tmp_path / "probability").scores(penguins)
    np.testing.assert_allclose(soft[:, 1], np.clip((penguins["bill_length_mm"] - 30) / 30, 0, 1))


def test_a_model_of_another_task_or_columns_is_refused_naming_what_differs(tmp_path, penguins):
    model = LogisticRegression(max_iter=2000).fit(_features(penguins), penguins["species"])
    model_contract.save_estimator(model, tmp_path / "m", ModelInfo(PENGUINS, list(_features(penguins).columns), "user"),
                                  _features(penguins))
    with pytest.raises(ModelContractError, match="trained for a multiclass task .* but the data is binary"):
        model_contract.load(tmp_path / "m", BINARY)
    with pytest.raises(ModelContractError, match=r"reads columns \['flipper_length_mm'\] that the data lacks"):
        model_contract.load(tmp_path / "m").scores(penguins.drop(columns=["flipper_length_mm"]))
    with pytest.raises(ModelContractError, match="not an MLflow model directory"):
        model_contract.load(tmp_path)


def test_import_checks_a_model_against_the_test_split_and_records_the_task(tmp_path, penguins):
    test = tmp_path / "test.parquet"
    penguins.to_parquet(test)
    model = LogisticRegression(max_iter=2000).fit(_features(penguins), penguins["species"])
    mlflow.sklearn.save_model(model, str(tmp_path / "theirs"), pip_requirements=[])
    info = import_model(str(tmp_path / "theirs"), test, PENGUINS, tmp_path / "ours")
    assert info == ModelInfo(PENGUINS, list(_features(penguins).columns), "imported")
    assert model_contract.read_info(tmp_path / "ours") == info
    assert model_contract.read_info(tmp_path / "theirs") is None  # the original is left as it was

    other = LogisticRegression(max_iter=2000).fit(_features(penguins), np.where(penguins.index % 2, "x", "y"))
    mlflow.sklearn.save_model(other, str(tmp_path / "wrong"), pip_requirements=[])
    with pytest.raises(ModelContractError, match="predicts class 'x', which is neither one of the task's classes"):
        import_model(str(tmp_path / "wrong"), test, PENGUINS, tmp_path / "refused")

"""Evaluate stage on UCI Adult: scores agree with sklearn, the blessing gate, the MLflow champion."""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from kfmlops.config import EvaluateConfig
from kfmlops.evaluate import MAX_CURVE_POINTS, Blessing, Scores, bless, champion_probabilities, score

WEAK = (["relationship", "education", "occupation"], ["age", "hours_per_week"])
STRONG = (
    ["workclass", "education", "marital_status", "occupation", "relationship", "race", "sex", "native_country"],
    ["age", "education_num", "hours_per_week", "capital_gain", "capital_loss"],
)


def _design(frame: pd.DataFrame, cats: list[str], nums: list[str]) -> pd.DataFrame:
    x = pd.get_dummies(frame[cats].fillna("?"), dtype=float)
    for name in nums:
        x[name] = frame[name].astype(float)
    return x


class _LogReg:
    """One-hot + standardise + LogisticRegression on raw Adult columns (picklable, no sklearn Pipeline needed)."""

    def __init__(self, train: pd.DataFrame, cats: list[str], nums: list[str]):
        self.cats, self.nums = cats, nums
        x = _design(train, cats, nums)
        self.columns = list(x.columns)
        self.mean, self.std = x.mean(), x.std() + 1e-9
        self.model = LogisticRegression(max_iter=1000).fit((x - self.mean) / self.std, train["y"])

    def proba(self, frame: pd.DataFrame) -> np.ndarray:
        x = _design(frame, self.cats, self.nums).reindex(columns=self.columns, fill_value=0.0)
        return self.model.predict_proba((x - self.mean) / self.std)[:, 1]


@pytest.fixture(scope="module")
def case(adult_train, adult_test):
    train, test = adult_train, adult_test
    weak, strong = _LogReg(train, *WEAK), _LogReg(train, *STRONG)
    return {
        "test": test,
        "y": test["y"].to_numpy(),
        "weak_model": weak,
        "weak": weak.proba(test),
        "strong": strong.proba(test),
    }


# --- score ---------------------------------------------------------------------------------------


def test_score_matches_sklearn(case):
    y, p = case["y"], case["weak"]
    s = score(y, p)
    pred = (p >= 0.5).astype(int)
    assert s.n == len(y) == 16281
    assert s.threshold == 0.5
    assert s.roc_auc == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert s.pr_auc == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert s.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert s.f1 == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert s.log_loss == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert s.brier == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert s.confusion_matrix == skm.confusion_matrix(y, pred).tolist()
    assert sum(map(sum, s.confusion_matrix)) == s.n
    assert 0.85 < s.roc_auc < 0.95  # a sane Adult model

    assert set(s.metrics()) == {"n", "threshold", "roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier"}
    assert all(isinstance(v, float) for v in s.metrics().values())
    text = json.dumps(s.to_json(), allow_nan=False)  # JSON-safe
    assert Scores.from_json(json.loads(text)) == s


def test_score_threshold_and_roc_curve(case):
    y, p = case["y"], case["weak"]
    s = score(y, p, threshold=0.3)
    pred = (p >= 0.3).astype(int)
    assert s.confusion_matrix == skm.confusion_matrix(y, pred).tolist()
    assert s.f1 == pytest.approx(skm.f1_score(y, pred), abs=1e-12)

    curve = s.roc_curve
    assert set(curve) == {"fpr", "tpr", "thresholds"}
    assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"]) <= MAX_CURVE_POINTS
    assert np.isfinite(curve["thresholds"]).all()
    assert curve["fpr"][0] == 0.0 and curve["tpr"][0] == 0.0 and curve["thresholds"][0] == 1.0
    assert curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["thresholds"]) <= 0)
    # points lie on sklearn's curve
    fpr, tpr, thr = skm.roc_curve(y, p)
    for f, t, th in zip(curve["fpr"][1:], curve["tpr"][1:], curve["thresholds"][1:]):
        i = int(np.flatnonzero(thr == th)[0])
        assert (fpr[i], tpr[i]) == (f, t)


def test_roc_curve_drops_inf_when_a_probability_is_one():
    s = score(np.array([0, 1, 1, 0]), np.array([0.1, 1.0, 0.4, 0.6]))
    assert s.roc_curve["thresholds"] == [1.0, 0.6, 0.4, 0.1]
    assert s.roc_curve["tpr"][0] == 0.5


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1, 1], [0.2, 0.8], "length mismatch: 3 labels but 2 probabilities"),
        ([1, 1, 1], [0.2, 0.8, 0.5], "one class only"),
        ([0, 1, 1], [0.2, np.nan, 0.5], "1 probabilities are NaN"),
        ([0, 1, 1], [0.2, 1.5, -0.1], r"2 probabilities lie outside \[0, 1\]"),
        ([0, 1, 2], [0.2, 0.8, 0.5], "labels must be 0/1; found \\[2\\]"),
        ([], [], "empty"),
    ],
)
def test_score_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        score(np.array(y), np.array(p, dtype=float))


def test_score_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        score(np.array([0, 1]), np.array([0.2, 0.8]), threshold=1.0)


# --- bless ---------------------------------------------------------------------------------------


def test_bless_blocks_on_absolute_minimums(case):
    s = score(case["y"], case["weak"])
    b = bless(s, EvaluateConfig(min_roc_auc=0.95))
    assert not b.blessed
    assert b.reasons == [f"roc_auc {s.roc_auc:.4f} < min_roc_auc 0.95"]

    b = bless(s, EvaluateConfig(min_roc_auc=0.95, min_pr_auc=0.9))
    assert not b.blessed
    assert b.reasons == [f"roc_auc {s.roc_auc:.4f} < min_roc_auc 0.95", f"pr_auc {s.pr_auc:.4f} < min_pr_auc 0.9"]


def test_bless_blocks_regression_against_stronger_champion(case):
    candidate = score(case["y"], case["weak"])
    champion = score(case["y"], case["strong"])
    drop = champion.roc_auc - candidate.roc_auc
    assert drop > 0.01  # the strong model really is stronger
    b = bless(candidate, EvaluateConfig(), champion=champion, champion_version="3")
    assert not b.blessed
    assert len(b.reasons) == 1
    reason = b.reasons[0]
    assert f"roc_auc {candidate.roc_auc:.4f}" in reason
    assert f"{drop:.4f} below champion v3 ({champion.roc_auc:.4f})" in reason
    assert "max_regression 0.01" in reason

    # all failed checks are listed
    b = bless(candidate, EvaluateConfig(min_roc_auc=0.99), champion=champion, champion_version="3")
    assert len(b.reasons) == 2 and b.reasons[0].startswith("roc_auc") and "max_regression" in b.reasons[1]


def test_bless_passes_otherwise(case):
    weak = score(case["y"], case["weak"])
    strong = score(case["y"], case["strong"])
    b = bless(strong, EvaluateConfig())
    assert b.blessed and len(b.reasons) == 1
    assert f"roc_auc {strong.roc_auc:.4f} >= min_roc_auc 0.85" in b.reasons[0]
    assert "no champion" in b.reasons[0]

    b = bless(strong, EvaluateConfig(), champion=weak, champion_version=7)  # better than the champion
    assert b.blessed and b.champion_version == "7"
    assert f">= champion v7 ({weak.roc_auc:.4f})" in b.reasons[0]

    b = bless(weak, EvaluateConfig(max_regression=0.05), champion=strong, champion_version="2")
    assert b.blessed and "within max_regression 0.05" in b.reasons[0]


def test_bless_regression_boundary_is_inclusive(case):
    base = score(case["y"], case["weak"])
    candidate = dataclasses.replace(base, roc_auc=0.85)
    champion = dataclasses.replace(base, roc_auc=0.86)  # 0.86 - 0.85 == 0.010000000000000009 in floats
    assert bless(candidate, EvaluateConfig(max_regression=0.01), champion=champion).blessed
    assert not bless(candidate, EvaluateConfig(max_regression=0.009), champion=champion).blessed


def test_blessing_json_and_html(case):
    candidate = score(case["y"], case["weak"])
    champion = score(case["y"], case["strong"])
    b = bless(candidate, EvaluateConfig(), champion=champion, champion_version="3")
    data = json.loads(json.dumps(b.to_json(), allow_nan=False))
    assert data["blessed"] is False and data["champion_version"] == "3"
    assert data["candidate"]["roc_auc"] == candidate.roc_auc and data["champion"]["roc_auc"] == champion.roc_auc
    assert Blessing.from_json(data) == b

    page = b.to_html()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert 'class="fail">FAIL' in page and "champion (v3)" in page
    assert f"{candidate.roc_auc:.4f}" in page and f"{champion.roc_auc:.4f}" in page
    assert "max_regression" in page

    alone = bless(champion, EvaluateConfig())
    assert 'class="pass">PASS' in alone.to_html() and alone.to_json()["champion"] is None


# --- champion from the MLflow registry -----------------------------------------------------------


class TinyModel(mlflow.pyfunc.PythonModel):
    """Wraps the fitted Adult model; answers a DataFrame with a "probability" column or a bare array."""

    def __init__(self, model: _LogReg, as_frame: bool):
        self.model, self.as_frame = model, as_frame

    def predict(self, context, model_input: pd.DataFrame, params=None):
        proba = self.model.proba(model_input)
        return pd.DataFrame({"probability": proba}) if self.as_frame else proba


@pytest.fixture
def registry(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=str(tmp_path / "artifacts")))
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


def test_champion_probabilities(case, registry):
    frame = case["test"].drop(columns=["y"]).head(500)
    expected = case["weak_model"].proba(frame)
    assert champion_probabilities("adult", frame) is None  # empty registry

    for as_frame in (True, False):
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model",
                python_model=TinyModel(case["weak_model"], as_frame=as_frame),
                pip_requirements=[],
                registered_model_name="adult",
            )
    assert champion_probabilities("adult", frame) is None  # registered, but no champion alias yet

    registry.set_registered_model_alias("adult", "champion", "1")  # DataFrame with "probability"
    version, proba = champion_probabilities("adult", frame)
    assert version == "1"
    assert proba.shape == (500,) and proba.dtype == np.float64
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-12)

    registry.set_registered_model_alias("adult", "champion", "2")  # bare 1-D array
    version, proba = champion_probabilities("adult", frame)
    assert version == "2"
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-12)
    assert score(case["y"][:500], proba).roc_auc == pytest.approx(skm.roc_auc_score(case["y"][:500], expected))


def test_champion_probabilities_propagates_other_errors(registry):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        champion_probabilities("", pd.DataFrame({"a": [1]}))  # invalid name, not "does not exist"

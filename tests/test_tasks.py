"""Per-task metrics, baselines and per-row fairness values on hand-built predictions datasets whose answers
are worked out by hand (kfmlops.tasks.binary, multiclass, regression)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from kfmlops import model_contract
from kfmlops.tasks import Task, binary, metrics_module, multiclass, regression

# The positive class sorts first: code order, not alphabetical order, decides which class is positive.
CHURN = Task("binary", "y", ("stay", "churn"))
ABC = Task("multiclass", "k", ("a", "b", "c"))
WAGE = Task("regression", "wage")


def _binary_frame(threshold: float = 0.5) -> pd.DataFrame:
    p = np.array([0.9, 0.2, 0.6, 0.7, 0.3, 0.1])
    labels = ["churn", "stay", "churn", "stay", "churn", "stay"]
    return model_contract.predictions(CHURN, np.column_stack([1 - p, p]), threshold, labels)


def _multiclass_frame() -> pd.DataFrame:
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                      [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    return model_contract.predictions(ABC, proba, labels=["a", "a", "b", "b", "c", "c"])


def test_binary_metrics_by_hand():
    frame = _binary_frame()
    assert frame["prediction"].tolist() == ["churn", "stay", "churn", "churn", "stay", "stay"]
    m = binary.metrics(CHURN, frame)
    assert list(m) == list(binary.DIRECTIONS)
    # tp 2 (rows 0, 2), fp 1 (row 3), fn 1 (row 4), tn 2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    # positive scores 0.9, 0.6, 0.3 against negative 0.2, 0.7, 0.1: 3 + 2 + 2 of 9 pairs ordered right
    assert m["roc_auc"] == pytest.approx(7 / 9)
    # ranked 0.9 P, 0.7 N, 0.6 P, 0.3 P: precision 1, 2/3, 3/4 at each positive
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.49 + 0.04 + 0.49 + 0.01) / 6)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6, 0.3, 0.3, 0.9])))
    d = binary.details(CHURN, frame)
    assert d["n"] == 6 and d["confusion_matrix"] == [[2, 1], [1, 2]]  # [[tn, fp], [fn, tp]]

    lower = binary.metrics(CHURN, _binary_frame(threshold=0.25))  # rows 0, 2, 3, 4 positive
    assert lower["recall"] == 1.0 and lower["precision"] == pytest.approx(3 / 4) and lower["roc_auc"] == m["roc_auc"]


def test_binary_roc_curve_is_finite_downsampled_and_on_sklearns_curve():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 5000), 0, 0.999)
    curve = binary.roc_curve(y, p)
    assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"]) <= binary.MAX_CURVE_POINTS
    assert curve["fpr"][0] == 0.0 and curve["tpr"][0] == 0.0 and curve["thresholds"][0] == 1.0
    assert curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["thresholds"]) <= 0)
    fpr, tpr, thr = skm.roc_curve(y, p)
    for f, t, th in zip(curve["fpr"][1:], curve["tpr"][1:], curve["thresholds"][1:]):
        i = int(np.flatnonzero(thr == th)[0])
        assert (fpr[i], tpr[i]) == (f, t)
    # a probability of exactly 1: the "predict nothing positive" point cannot be given threshold 1.0
    ones = binary.roc_curve(np.array([0, 1, 1, 0]), np.array([0.1, 1.0, 0.4, 0.6]))
    assert ones["thresholds"] == [1.0, 0.6, 0.4, 0.1] and ones["tpr"][0] == 0.5


def test_binary_needs_both_classes_and_labels():
    frame = _binary_frame()
    with pytest.raises(ValueError, match="one class only \\('churn', 3 rows\\)"):
        binary.metrics(CHURN, frame[frame["label"] == "churn"])
    with pytest.raises(ValueError, match="no 'label' column: score a split that holds the label 'y'"):
        binary.metrics(CHURN, frame.drop(columns=["label"]))
    with pytest.raises(ValueError, match="no rows"):
        binary.metrics(CHURN, frame.iloc[:0])


def test_multiclass_metrics_and_confusion_matrix_by_hand():
    frame = _multiclass_frame()
    assert frame["prediction"].tolist() == ["a", "b", "b", "b", "c", "a"]
    assert multiclass.details(ABC, frame) == {"n": 6, "confusion_matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]}
    m = multiclass.metrics(ABC, frame)
    assert list(m) == list(multiclass.DIRECTIONS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [0.5, 0.8, 2 / 3]  # a: precision 1/2 recall 1/2; b: 2/3 and 1; c: 1 and 1/2
    assert m["macro_f1"] == pytest.approx(np.mean(f1)) and m["weighted_f1"] == pytest.approx(np.mean(f1))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.8, 0.4])))
    y = ABC.encode(frame["label"])
    assert m["roc_auc_ovr"] == pytest.approx(
        np.mean([skm.roc_auc_score(y == k, frame[f"proba:{c}"]) for k, c in enumerate(ABC.classes)]))

    without_c = frame[frame["label"] != "c"]  # not every class occurs in the labels: no one-vs-rest AUC
    assert "roc_auc_ovr" not in multiclass.metrics(ABC, without_c)
    assert multiclass.details(ABC, without_c)["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_multiclass_probabilities_are_renormalised_within_tolerance_and_refused_beyond():
    frame = _multiclass_frame()
    nearly = frame.assign(**{"proba:a": frame["proba:a"] + 1e-6})  # a float32 model's rounding
    assert multiclass.metrics(ABC, nearly)["log_loss"] == pytest.approx(multiclass.metrics(ABC, frame)["log_loss"], abs=1e-5)
    with pytest.raises(ValueError, match="6 rows' class probabilities do not sum to 1"):
        multiclass.metrics(ABC, frame.assign(**{"proba:a": frame["proba:a"] + 0.1}))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        multiclass.metrics(ABC, frame.assign(**{"proba:a": -frame["proba:a"]}))


def test_regression_metrics_by_hand_and_mape_over_nonzero_labels():
    frame = model_contract.predictions(WAGE, np.array([3.0, 1.0, 4.0, 7.0]), labels=[2.0, 0.0, 4.0, 10.0])
    m = regression.metrics(WAGE, frame)
    assert list(m) == list(regression.DIRECTIONS)
    assert m["rmse"] == pytest.approx(math.sqrt(11 / 4))  # errors -1, -1, 0, 3
    assert m["mae"] == pytest.approx(5 / 4)
    assert m["r2"] == pytest.approx(1 - 11 / 56)  # labels' mean 4: squares 4 + 16 + 0 + 36
    assert m["mape"] == pytest.approx((1 / 2 + 0 / 4 + 3 / 10) / 3)  # the row labelled 0 has no percentage
    assert regression.details(WAGE, frame) == {"n": 4, "mape_rows": 3}

    zeros = model_contract.predictions(WAGE, np.array([1.0, -1.0]), labels=[0.0, 0.0])
    assert set(regression.metrics(WAGE, zeros)) == {"rmse", "mae", "r2"} and regression.details(WAGE, zeros)["mape_rows"] == 0
    with pytest.raises(ValueError, match="'prediction' column holds 1 missing or infinite values"):
        regression.metrics(WAGE, frame.assign(prediction=[1.0, np.nan, 2.0, 3.0]))


def test_baselines_are_the_prior_and_the_mean():
    prior = binary.baseline(CHURN, ["stay", "stay", "stay", "churn"], 3)
    np.testing.assert_array_equal(prior, [[0.75, 0.25]] * 3)
    frame = model_contract.predictions(CHURN, prior, labels=["stay", "churn", "churn"])
    assert (frame["prediction"] == "stay").all() and binary.metrics(CHURN, frame)["roc_auc"] == 0.5
    np.testing.assert_array_equal(multiclass.baseline(ABC, ["a", "b", "b", "b"], 2), [[0.25, 0.75, 0.0]] * 2)
    np.testing.assert_array_equal(regression.baseline(WAGE, [1.0, 2.0, 6.0], 2), [3.0, 3.0])
    with pytest.raises(ValueError, match="train labels"):
        regression.baseline(WAGE, [], 2)


@pytest.mark.parametrize("task", [CHURN, ABC, WAGE], ids=lambda t: t.kind)
def test_each_module_declares_its_primary_metric_directions_ideals_and_disparities(task):
    module = metrics_module(task)
    assert module.PRIMARY == {"binary": "roc_auc", "multiclass": "macro_f1", "regression": "rmse"}[task.kind]
    assert module.PRIMARY in module.DIRECTIONS and set(module.DIRECTIONS) == set(module.IDEAL)
    assert set(module.DIRECTIONS.values()) <= {"max", "min"}
    assert all(module.IDEAL[m] == (1.0 if d == "max" else 0.0) for m, d in module.DIRECTIONS.items())
    for statistic, columns, threshold in module.DISPARITIES.values():
        assert statistic in ("difference", "min_over_max", "max_over_min") and threshold.startswith(("max_", "min_"))
        assert columns


def test_per_row_fairness_values():
    b = binary.group_columns(CHURN, _binary_frame())
    np.testing.assert_array_equal(b["selection_rate"], [1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(b["tpr"], [1, np.nan, 1, np.nan, 0, np.nan])
    np.testing.assert_array_equal(b["fpr"], [np.nan, 0, np.nan, 1, np.nan, 0])
    np.testing.assert_array_equal(b["accuracy"], [1, 1, 1, 0, 0, 1])
    m = multiclass.group_columns(ABC, _multiclass_frame())
    assert list(m) == ["accuracy", "selection_rate:a", "selection_rate:b", "selection_rate:c"]
    np.testing.assert_array_equal(m["selection_rate:a"], [1, 0, 0, 0, 0, 1])
    r = regression.group_columns(WAGE, model_contract.predictions(WAGE, np.array([3.0, 1.0]), labels=[2.0, 0.0]))
    assert {k: v.tolist() for k, v in r.items()} == {"mae": [1.0, 1.0], "mean_prediction": [3.0, 1.0], "mean_label": [2.0, 0.0]}

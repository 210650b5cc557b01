"""Evaluate per task on tiny hand-built frames whose figures are worked out by hand: scores, the trivial
baseline, the reference model, the blessing checks (limits, baseline gap, champion in either direction),
the report, and the champion read from a real sqlite MLflow registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfmlops import model_contract
from kfmlops.config import EvaluateConfig, MlflowConfig, PipelineConfig
from kfmlops.evaluate import (
    Blessing,
    Champion,
    EvaluateConfigError,
    Scores,
    baseline_predictions,
    bless,
    champion_scores,
    champion_version,
    evaluate,
    is_constant,
    primary_metric,
    reference_predictions,
    score,
)
from kfmlops.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
YN = Task("binary", "y", ("no", "yes"))
ABC = Task("multiclass", "k", ("a", "b", "c"))
VALUE = Task("regression", "v")


def _binary(p: list[float], labels: list[str], threshold: float = 0.5) -> pd.DataFrame:
    p = np.asarray(p, dtype=float)
    return model_contract.predictions(YN, np.column_stack([1 - p, p]), threshold, labels)


def _binary_candidate(threshold: float = 0.5) -> pd.DataFrame:
    """P(yes) 0.1, 0.6, 0.4, 0.9 for labels no, no, yes, yes."""
    return _binary([0.1, 0.6, 0.4, 0.9], ["no", "no", "yes", "yes"], threshold)


def _multiclass_candidate() -> pd.DataFrame:
    """0.6 on the predicted class, 0.2 on the others: predicts a, b, b, b, c, a for a, a, b, b, c, c."""
    proba = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.6, 0.2],
                      [0.2, 0.6, 0.2], [0.2, 0.2, 0.6], [0.6, 0.2, 0.2]])
    return model_contract.predictions(ABC, proba, labels=["a", "a", "b", "b", "c", "c"])


def _regression_candidate() -> pd.DataFrame:
    """Predictions 1.5, 2, 2, 5 for labels 1, 2, 3, 4."""
    return model_contract.predictions(VALUE, np.array([1.5, 2.0, 2.0, 5.0]), labels=[1.0, 2.0, 3.0, 4.0])


# --- score, is_constant, baseline_predictions ----------------------------------------------------


def test_score_binary_by_hand():
    s = score(YN, _binary_candidate())
    # predicted no, yes, no, yes: tn 1 (row 0), fp 1 (row 1), fn 1 (row 2), tp 1 (row 3)
    assert s.details["n"] == 4 and s.details["confusion_matrix"] == [[1, 1], [1, 1]]
    assert s.metrics["accuracy"] == pytest.approx(0.5)
    assert s.metrics["precision"] == s.metrics["recall"] == s.metrics["f1"] == pytest.approx(0.5)
    # positives 0.4, 0.9 against negatives 0.1, 0.6: 0.4>0.1, 0.9>0.1, 0.9>0.6 -> 3 of 4 pairs
    assert s.metrics["roc_auc"] == pytest.approx(0.75)
    # ranked 0.9 P, 0.6 N, 0.4 P: recall steps of 0.5 at precision 1 and 2/3
    assert s.metrics["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # (0.1² + 0.6² + 0.6² + 0.1²) / 4 = 0.74 / 4
    assert s.metrics["brier"] == pytest.approx(0.185)
    # -(ln 0.9 + ln 0.4 + ln 0.4 + ln 0.9) / 4 = -ln(0.36) / 2 = -ln 0.6
    assert s.metrics["log_loss"] == pytest.approx(-math.log(0.6))
    assert s.to_json() == {**s.metrics, **s.details}
    json.dumps(s.to_json(), allow_nan=False)

    # the threshold is already applied by model_contract.predictions: at 0.3 row 2 (0.4) turns yes too
    low = score(YN, _binary_candidate(threshold=0.3))
    assert low.details["confusion_matrix"] == [[1, 1], [0, 2]] and low.metrics["accuracy"] == pytest.approx(0.75)
    assert low.metrics["roc_auc"] == s.metrics["roc_auc"]  # ranking metrics ignore the threshold


def test_score_multiclass_by_hand():
    s = score(ABC, _multiclass_candidate())
    assert s.details == {"n": 6, "confusion_matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]}
    assert s.metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 a: P 1/2 R 1/2 -> 1/2; b: P 2/3 R 1 -> 0.8; c: P 1 R 1/2 -> 2/3; equal supports, so weighted == macro
    assert s.metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s.metrics["weighted_f1"] == pytest.approx(s.metrics["macro_f1"])
    # the true class gets 0.6 on four rows and 0.2 on two
    assert s.metrics["log_loss"] == pytest.approx(-(4 * math.log(0.6) + 2 * math.log(0.2)) / 6)
    assert "roc_auc_ovr" in s.metrics  # every class occurs in the labels


def test_score_regression_by_hand():
    s = score(VALUE, _regression_candidate())
    # errors -0.5, 0, 1, -1
    assert s.metrics["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))  # 0.75
    assert s.metrics["mae"] == pytest.approx(2.5 / 4)
    # mean label 2.5: SS_tot 2.25 + 0.25 + 0.25 + 2.25 = 5, SS_res 2.25
    assert s.metrics["r2"] == pytest.approx(1 - 2.25 / 5)
    assert s.metrics["mape"] == pytest.approx((0.5 / 1 + 0 / 2 + 1 / 3 + 1 / 4) / 4)
    assert s.details == {"n": 4, "mape_rows": 4}


def test_is_constant_per_task():
    assert not is_constant(YN, _binary_candidate())
    assert is_constant(YN, _binary([0.3, 0.3, 0.3], ["no", "yes", "no"]))
    assert not is_constant(ABC, _multiclass_candidate())
    assert is_constant(ABC, model_contract.predictions(ABC, np.tile([0.5, 0.3, 0.2], (3, 1)), labels=["a", "b", "c"]))
    assert not is_constant(VALUE, _regression_candidate())
    assert is_constant(VALUE, model_contract.predictions(VALUE, np.full(3, 2.5), labels=[1.0, 2.0, 3.0]))
    # differences within float noise still count as constant
    assert is_constant(VALUE, model_contract.predictions(VALUE, np.array([2.5, 2.5 + 1e-15]), labels=[1.0, 2.0]))


def test_baseline_predictions_are_the_prior_or_the_mean():
    # train prior: 3 of 4 no -> P(yes) 0.25 on every test row, below 0.5, so every prediction is no
    base = baseline_predictions(YN, ["no", "no", "no", "yes"], ["no", "no", "yes", "yes"])
    assert list(base.columns) == YN.prediction_columns()
    assert base["label"].tolist() == ["no", "no", "yes", "yes"] and base["prediction"].tolist() == ["no"] * 4
    assert base["proba:yes"].tolist() == [0.25] * 4 and is_constant(YN, base)
    s = score(YN, base)
    assert s.metrics["roc_auc"] == 0.5 and s.metrics["accuracy"] == 0.5 and s.metrics["f1"] == 0.0
    assert s.metrics["brier"] == pytest.approx((2 * 0.25**2 + 2 * 0.75**2) / 4)  # 0.3125
    # a threshold below the prior turns every prediction positive
    assert baseline_predictions(YN, ["no", "no", "no", "yes"], ["no", "yes"], threshold=0.2)["prediction"].tolist() == [
        "yes", "yes"]

    # prior 4/9, 3/9, 2/9: argmax a everywhere
    base = baseline_predictions(ABC, ["a"] * 4 + ["b"] * 3 + ["c"] * 2, ["a", "b", "c"])
    np.testing.assert_allclose(base[ABC.proba_columns].to_numpy(), np.tile([4 / 9, 3 / 9, 2 / 9], (3, 1)))
    assert base["prediction"].tolist() == ["a", "a", "a"]

    base = baseline_predictions(VALUE, [1.0, 2.0, 3.0, 6.0], [0.0, 10.0])  # mean 12 / 4 = 3
    assert base["prediction"].tolist() == [3.0, 3.0] and base["label"].tolist() == [0.0, 10.0]


def test_baseline_needs_train_labels():
    with pytest.raises(ValueError, match="needs train labels"):
        baseline_predictions(VALUE, [], [1.0])


# --- primary_metric ------------------------------------------------------------------------------


def test_primary_metric_defaults_per_task_and_config_override():
    assert primary_metric(YN, EvaluateConfig()) == "roc_auc"
    assert primary_metric(ABC, EvaluateConfig()) == "macro_f1"
    assert primary_metric(VALUE, EvaluateConfig()) == "rmse"
    assert primary_metric(YN, EvaluateConfig(primary_metric="accuracy")) == "accuracy"
    assert primary_metric(VALUE, EvaluateConfig(primary_metric="mae", limits={"r2": 0.5})) == "mae"


@pytest.mark.parametrize(
    "task, config, match",
    [
        (YN, EvaluateConfig(primary_metric="rmse"), r"primary_metric 'rmse' is not a binary metric"),
        (ABC, EvaluateConfig(primary_metric="roc_auc"), r"'roc_auc' is not a multiclass metric.*macro_f1"),
        (VALUE, EvaluateConfig(limits={"accuracy": 0.9}), r"limits names \['accuracy'\], not regression metrics"),
        (YN, EvaluateConfig(limits={"roc_auc": 0.8, "r2": 0.1, "mae": 1}), r"\['mae', 'r2'\]"),
    ],
)
def test_primary_metric_refuses_metrics_of_another_task(task, config, match):
    with pytest.raises(EvaluateConfigError, match=match):
        primary_metric(task, config)


@pytest.mark.parametrize("name, task, primary, other", [("adult.yaml", YN, "roc_auc", VALUE),
                                                         ("penguins.yaml", ABC, "macro_f1", VALUE),
                                                         ("cps1988.yaml", VALUE, "rmse", YN)])
def test_shipped_configs_fit_their_task(name, task, primary, other):
    config = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / name).settings.evaluate
    assert primary_metric(task, config) == primary
    with pytest.raises(EvaluateConfigError):
        primary_metric(other, config)


# --- bless: limits and the baseline --------------------------------------------------------------

BINARY_BASE = Scores({"roc_auc": 0.5, "accuracy": 0.6, "log_loss": 0.7})
REGRESSION_BASE = Scores({"rmse": 10.0, "mae": 8.0, "r2": 0.0})


def _check(blessing: Blessing, name: str):
    return next(c for c in blessing.checks if c.name == name)


def test_bless_limits_each_in_its_metric_direction():
    candidate = Scores({"roc_auc": 0.8, "accuracy": 0.7, "log_loss": 0.3})
    b = bless(YN, EvaluateConfig(limits={"roc_auc": 0.85, "log_loss": 0.4}), candidate, BINARY_BASE)
    assert [c.name for c in b.checks] == ["limit:roc_auc", "limit:log_loss", "baseline", "champion"]
    assert not b.blessed
    # roc_auc is higher-is-better: 0.8 < 0.85 fails; log_loss lower-is-better: 0.3 <= 0.4 passes
    assert _check(b, "limit:roc_auc").detail == "primary metric roc_auc 0.8000 < evaluate.limits.roc_auc 0.85"
    assert _check(b, "limit:log_loss").detail == "log_loss 0.3000 <= evaluate.limits.log_loss 0.4"
    assert b.reasons[0] == "failed: primary metric roc_auc 0.8000 < evaluate.limits.roc_auc 0.85"
    assert all(r.startswith("passed: ") for r in b.reasons[1:])

    b = bless(YN, EvaluateConfig(limits={"roc_auc": 0.8, "log_loss": 0.29}), candidate, BINARY_BASE)
    assert _check(b, "limit:roc_auc").passed  # the bound itself is met
    assert _check(b, "limit:log_loss").detail == "log_loss 0.3000 > evaluate.limits.log_loss 0.29"

    b = bless(VALUE, EvaluateConfig(limits={"rmse": 4.0, "r2": 0.5}), Scores({"rmse": 4.0, "mae": 3.0, "r2": 0.4}),
              REGRESSION_BASE)
    assert _check(b, "limit:rmse").detail == "primary metric rmse 4.0000 <= evaluate.limits.rmse 4"
    assert _check(b, "limit:r2").detail == "r2 0.4000 < evaluate.limits.r2 0.5"


def test_bless_limit_on_a_metric_that_could_not_be_computed_fails():
    # multiclass leaves roc_auc_ovr out when a class is missing from the labels
    candidate = Scores({"accuracy": 0.9, "macro_f1": 0.9, "weighted_f1": 0.9, "log_loss": 0.2})
    base = Scores({"accuracy": 0.4, "macro_f1": 0.2, "weighted_f1": 0.2, "log_loss": 1.1})
    b = bless(ABC, EvaluateConfig(limits={"roc_auc_ovr": 0.8}), candidate, base)
    check = _check(b, "limit:roc_auc_ovr")
    assert not check.passed and "could not be computed" in check.detail and not b.blessed


def test_bless_baseline_gap_in_both_directions():
    # roc_auc: (0.8 - 0.5) / (1 - 0.5) = 60% of the gap
    candidate = Scores({"roc_auc": 0.8, "accuracy": 0.7, "log_loss": 0.5})
    b = bless(YN, EvaluateConfig(min_baseline_improvement=0.6), candidate, BINARY_BASE)
    assert b.blessed
    assert _check(b, "baseline").detail == ("roc_auc 0.8000 closes 60.0% of the gap between the baseline (0.5000) "
                                            "and the ideal 1; min_baseline_improvement 60.0%")
    assert not bless(YN, EvaluateConfig(min_baseline_improvement=0.61), candidate, BINARY_BASE).blessed

    # rmse, lower is better: (9.6 - 10) / (0 - 10) = 4% < 5% fails; (9 - 10) / (0 - 10) = 10% passes
    b = bless(VALUE, EvaluateConfig(), Scores({"rmse": 9.6}), REGRESSION_BASE)
    assert not b.blessed and "closes 4.0% of the gap" in _check(b, "baseline").detail
    assert bless(VALUE, EvaluateConfig(), Scores({"rmse": 9.0}), REGRESSION_BASE).blessed
    # worse than the baseline: (11 - 10) / (0 - 10) = -10%
    b = bless(VALUE, EvaluateConfig(), Scores({"rmse": 11.0}), REGRESSION_BASE)
    assert "closes -10.0% of the gap" in _check(b, "baseline").detail and not b.blessed

    # a non-default primary metric: accuracy (0.7 - 0.6) / (1 - 0.6) = 25%
    b = bless(YN, EvaluateConfig(primary_metric="accuracy", min_baseline_improvement=0.3), candidate, BINARY_BASE)
    assert b.primary_metric == "accuracy" and "closes 25.0% of the gap" in _check(b, "baseline").detail
    assert not b.blessed


def test_bless_constant_predictor_fails_the_baseline_check_outright():
    candidate = Scores({"roc_auc": 0.9, "accuracy": 0.9, "log_loss": 0.2})  # good figures, constant scores
    b = bless(YN, EvaluateConfig(), candidate, BINARY_BASE, constant=True)
    assert not b.blessed
    assert b.reasons[0] == ("failed: the candidate gives every test row the same scores (a constant predictor), so it "
                            "learned nothing over the baseline")


def test_bless_baseline_already_ideal():
    # constant labels: the mean predictor has rmse 0, the ideal; only a perfect candidate matches it
    b = bless(VALUE, EvaluateConfig(), Scores({"rmse": 0.0}), Scores({"rmse": 0.0}))
    assert b.blessed and "already the ideal 0" in _check(b, "baseline").detail
    assert not bless(VALUE, EvaluateConfig(), Scores({"rmse": 0.1}), Scores({"rmse": 0.0})).blessed


# --- bless: the champion -------------------------------------------------------------------------


def test_bless_champion_higher_is_better_accuracy():
    config = EvaluateConfig(primary_metric="accuracy", max_regression=0.01)
    candidate = Scores({"roc_auc": 0.9, "accuracy": 0.85})
    champion = Champion("3", Scores({"roc_auc": 0.9, "accuracy": 0.86}))
    # 0.86 - 0.85 is 0.010000000000000009 in floats: still within max_regression 0.01
    b = bless(YN, config, candidate, BINARY_BASE, champion=champion)
    assert b.blessed and b.champion_version == "3"
    assert _check(b, "champion").detail == ("accuracy 0.8500 is 0.0100 below champion v3 (0.8600), within "
                                            "max_regression 0.01")
    b = bless(YN, config.model_copy(update={"max_regression": 0.009}), candidate, BINARY_BASE, champion=champion)
    assert not b.blessed
    assert b.reasons[0] == "failed: accuracy 0.8500 is 0.0100 below champion v3 (0.8600), > max_regression 0.009"


def test_bless_champion_higher_is_better_roc_auc():
    candidate = Scores({"roc_auc": 0.90, "accuracy": 0.8})
    b = bless(YN, EvaluateConfig(), candidate, BINARY_BASE, champion=Champion("7", Scores({"roc_auc": 0.88})))
    assert b.blessed and _check(b, "champion").detail == "roc_auc 0.9000 is no worse than champion v7 (0.8800)"
    # 0.95 - 0.90 = 0.05 > 0.01
    b = bless(YN, EvaluateConfig(), candidate, BINARY_BASE, champion=Champion("7", Scores({"roc_auc": 0.95})))
    assert not b.blessed and "is 0.0500 below champion v7 (0.9500), > max_regression 0.01" in b.reasons[0]
    assert bless(YN, EvaluateConfig(max_regression=0.05), candidate, BINARY_BASE,
                 champion=Champion("7", Scores({"roc_auc": 0.95}))).blessed


def test_bless_champion_lower_is_better_rmse():
    candidate = Scores({"rmse": 4.2})
    champion = Champion("2", Scores({"rmse": 4.0}))
    # 4.2 - 4.0 = 0.2 above the champion: fails with max_regression 0.1, passes with 0.25
    b = bless(VALUE, EvaluateConfig(max_regression=0.1), candidate, REGRESSION_BASE, champion=champion)
    assert not b.blessed
    assert _check(b, "champion").detail == "rmse 4.2000 is 0.2000 above champion v2 (4.0000), > max_regression 0.1"
    b = bless(VALUE, EvaluateConfig(max_regression=0.25), candidate, REGRESSION_BASE, champion=champion)
    assert b.blessed and "0.2000 above champion v2 (4.0000), within max_regression 0.25" in b.reasons[-1]
    # a lower rmse than the champion's is better, whatever max_regression says
    b = bless(VALUE, EvaluateConfig(max_regression=0.0), Scores({"rmse": 3.9}), REGRESSION_BASE, champion=champion)
    assert b.blessed and _check(b, "champion").detail == "rmse 3.9000 is no worse than champion v2 (4.0000)"


def test_bless_without_a_champion_or_with_a_skipped_one_passes_that_check():
    candidate = Scores({"roc_auc": 0.8})
    b = bless(YN, EvaluateConfig(), candidate, BINARY_BASE)
    assert _check(b, "champion").reason == "passed: no champion to compare with" and b.champion_version is None
    skipped = Champion("4", skipped="champion v4 cannot score this test split: it reads columns ['z']")
    b = bless(YN, EvaluateConfig(), candidate, BINARY_BASE, champion=skipped)
    assert b.blessed and b.champion_version == "4"
    assert _check(b, "champion").detail == "champion v4 not compared: " + skipped.skipped


def test_bless_reasons_list_every_check_failures_first():
    config = EvaluateConfig(limits={"log_loss": 0.2, "accuracy": 0.5})
    candidate = Scores({"roc_auc": 0.8, "accuracy": 0.7, "log_loss": 0.3})
    b = bless(YN, config, candidate, BINARY_BASE, champion=Champion("1", Scores({"roc_auc": 0.9})))
    assert [c.name for c in b.checks] == ["limit:log_loss", "limit:accuracy", "baseline", "champion"]
    # failed: log_loss 0.3 > 0.2, champion 0.9 - 0.8 = 0.1 > 0.01; passed: accuracy, baseline (60%)
    assert [r.split(":")[0] for r in b.reasons] == ["failed", "failed", "passed", "passed"]
    assert "log_loss 0.3000 > evaluate.limits.log_loss 0.2" in b.reasons[0]
    assert "below champion v1" in b.reasons[1]
    assert "accuracy 0.7000 >= evaluate.limits.accuracy 0.5" in b.reasons[2] and "closes 60.0%" in b.reasons[3]


def test_bless_refuses_a_config_of_another_task():
    with pytest.raises(EvaluateConfigError):
        bless(VALUE, EvaluateConfig(limits={"roc_auc": 0.8}), Scores({"rmse": 1.0}), REGRESSION_BASE)


# --- Blessing.to_json / to_html ------------------------------------------------------------------


def test_blessing_json_and_html_binary():
    candidate = score(YN, _binary_candidate())
    base = score(YN, baseline_predictions(YN, ["no", "yes"], ["no", "no", "yes", "yes"]))
    champion = Champion("3", Scores({**candidate.metrics, "roc_auc": 0.9}, candidate.details))
    b = bless(YN, EvaluateConfig(limits={"roc_auc": 0.7}), candidate, base, champion=champion)
    data = json.loads(json.dumps(b.to_json(), allow_nan=False))
    assert data["blessed"] is False and data["primary_metric"] == "roc_auc"
    assert data["task"] == {"kind": "binary", "label": "y", "classes": ["no", "yes"], "reason": ""}
    assert data["reasons"] == b.reasons and data["reasons"][0].startswith("failed: roc_auc 0.7500 is 0.1500 below")
    assert [c["name"] for c in data["checks"]] == ["limit:roc_auc", "baseline", "champion"]
    assert [c["passed"] for c in data["checks"]] == [True, True, False]
    assert data["candidate"]["roc_auc"] == 0.75 and data["candidate"]["confusion_matrix"] == [[1, 1], [1, 1]]
    assert data["baseline"]["roc_auc"] == 0.5 and data["reference"] is None
    assert data["champion"]["roc_auc"] == 0.9 and data["champion_version"] == "3" and data["champion_skipped"] is None

    page = b.to_html()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert 'class="fail">FAIL</span> not blessed (binary task, label y)' in page
    assert "roc_auc (primary)" in page and "champion (v3)" in page and "baseline (prior)" in page
    assert "0.7500" in page and "0.9000" in page and "max_regression 0.01" in page
    assert page.count("Confusion matrix: ") == 3  # candidate, baseline, champion
    assert "<th>actual \\ predicted</th><th>no</th><th>yes</th>" in page


def test_blessing_html_regression_and_a_skipped_champion():
    candidate = score(VALUE, _regression_candidate())
    base = score(VALUE, baseline_predictions(VALUE, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]))
    skipped = Champion("5", skipped="champion v5 cannot score this test split: a <binary> model")
    b = bless(VALUE, EvaluateConfig(), candidate, base, reference=candidate, champion=skipped)
    assert b.blessed and b.to_json()["champion"] is None and b.to_json()["champion_skipped"] == skipped.skipped
    assert b.to_json()["reference"]["rmse"] == 0.75
    page = b.to_html()
    assert 'class="pass">PASS</span> blessed (regression task, label v)' in page
    assert "baseline (mean)" in page and "reference (linear)" in page and "rmse (primary)" in page
    assert "Champion v5 not compared" in page and "a &lt;binary&gt; model" in page  # escaped
    assert "Confusion matrix" not in page


# --- reference_predictions -----------------------------------------------------------------------


def test_reference_ridge_by_hand_and_exclude():
    """Ridge(alpha 1) on standardised x: y = 2x + 1 on x 0..3 (mean 1.5, variance 1.25, so sum z² = 4).
    Slope on z: sum(z (y - 4)) / (sum z² + alpha) = (10 / sqrt 1.25) / 5; per unit of x that is 2 * 4/5 = 1.6,
    so the prediction is 4 + 1.6 (x - 1.5)."""
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "noise": [5.0, -3.0, 8.0, 1.0], "v": [1.0, 3.0, 5.0, 7.0]})
    test = pd.DataFrame({"v": [1.0, 5.0, 9.0], "noise": [0.0, 0.0, 0.0], "x": [0.0, 2.0, 4.0]})  # other column order
    ref = reference_predictions(VALUE, train, test, exclude=("noise",))
    assert list(ref.columns) == ["label", "prediction"] and ref["label"].tolist() == [1.0, 5.0, 9.0]
    np.testing.assert_allclose(ref["prediction"], [1.6, 4.8, 8.0], atol=1e-9)
    # (-0.6, 0.2, 1.0) errors: rmse sqrt(1.4 / 3)
    assert score(VALUE, ref).metrics["rmse"] == pytest.approx(math.sqrt(1.4 / 3))
    # reading the noise column changes the fit
    assert not np.allclose(reference_predictions(VALUE, train, test)["prediction"], [1.6, 4.8, 8.0], atol=1e-4)


def test_reference_logistic_regression_is_symmetric_and_one_hot_encodes_categories():
    """x and colour are mirror images between the classes, so the intercept is 0: P(yes) is 0.5 at x 0 with an
    unseen or missing colour (all-zero one-hot), and P(yes | x, red) = 1 - P(yes | -x, blue)."""
    train = pd.DataFrame({"x": [-2.0, -1.0, 1.0, 2.0], "colour": ["blue", "blue", "red", "red"],
                          "y": ["no", "no", "yes", "yes"]})
    test = pd.DataFrame({"x": [0.0, -3.0, 3.0, 0.0], "colour": ["green", "blue", "red", None],
                         "y": ["no", "no", "yes", "yes"]})
    ref = reference_predictions(YN, train, test)
    assert list(ref.columns) == YN.prediction_columns()
    p = ref["proba:yes"].to_numpy()
    np.testing.assert_allclose(p[[0, 3]], 0.5, atol=1e-9)
    assert p[1] == pytest.approx(1 - p[2], abs=1e-9) and p[2] > 0.8
    assert ref["prediction"].tolist()[1:3] == ["no", "yes"]
    np.testing.assert_allclose(ref[YN.proba_columns].sum(axis=1), 1.0)


def test_reference_multiclass_class_absent_from_train_gets_probability_zero():
    train = pd.DataFrame({"x": [-2.0, -1.0, 1.0, 2.0], "k": ["a", "a", "b", "b"]})
    test = pd.DataFrame({"x": [-2.0, 2.0], "k": ["a", "c"]})
    ref = reference_predictions(ABC, train, test)
    assert ref["proba:c"].tolist() == [0.0, 0.0] and ref["prediction"].tolist() == ["a", "b"]
    # two classes mirrored around x 0: P(a | -2) = P(b | 2)
    assert ref.loc[0, "proba:a"] == pytest.approx(ref.loc[1, "proba:b"], abs=1e-9)
    np.testing.assert_allclose(ref[ABC.proba_columns].sum(axis=1), 1.0)


def test_reference_needs_a_feature_column():
    frame = pd.DataFrame({"v": [1.0, 2.0]})
    with pytest.raises(ValueError, match="no feature columns besides the label 'v'"):
        reference_predictions(VALUE, frame, frame)
    frame = frame.assign(id=[1, 2])
    with pytest.raises(ValueError, match="no feature columns"):
        reference_predictions(VALUE, frame, frame, exclude=("id",))


# --- evaluate end to end -------------------------------------------------------------------------

BINARY_TRAIN = pd.DataFrame({"x": [-2.0, -1.0, 1.0, 2.0, 3.0], "y": ["no", "no", "yes", "yes", "yes"]})
BINARY_TEST = pd.DataFrame({"x": [-2.0, -1.0, 1.0, 2.0], "y": ["no", "no", "yes", "yes"]})


def test_evaluate_binary_end_to_end():
    b = evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST, EvaluateConfig())
    # candidate roc_auc 0.75; the prior (P(yes) 3/5 on every row) 0.5: (0.75 - 0.5) / 0.5 = 50% of the gap
    assert b.blessed and b.primary_metric == "roc_auc" and b.champion is None
    assert b.candidate.metrics["roc_auc"] == pytest.approx(0.75) and b.baseline.metrics["roc_auc"] == 0.5
    assert b.baseline.details["confusion_matrix"] == [[0, 2], [0, 2]]  # 0.6 >= 0.5: all yes
    assert "closes 50.0% of the gap" in _check(b, "baseline").detail
    # the reference is a logistic regression, increasing in x: it ranks the test rows perfectly
    assert b.reference is not None and b.reference.metrics["roc_auc"] == 1.0

    # the adult.yaml bound: roc_auc >= 0.88
    b = evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST, EvaluateConfig(limits={"roc_auc": 0.88}))
    assert not b.blessed and b.reasons[0] == "failed: primary metric roc_auc 0.7500 < evaluate.limits.roc_auc 0.88"

    # a constant candidate is refused however its figures look
    constant = _binary([0.7] * 4, ["no", "no", "yes", "yes"])
    b = evaluate(YN, constant, BINARY_TRAIN, BINARY_TEST, EvaluateConfig(min_baseline_improvement=0.0))
    assert not b.blessed and "constant predictor" in b.reasons[0]


def test_evaluate_multiclass_end_to_end():
    train = pd.DataFrame({"x": [0.0, 0.5, 1.0, 1.5, 5.0, 5.5, 6.0, 10.0, 10.5], "k": list("aaaabbbcc")})
    test = pd.DataFrame({"x": [0.0, 1.0, 5.0, 5.5, 10.0, 10.5], "k": list("aabbcc")})
    b = evaluate(ABC, _multiclass_candidate(), train, test, EvaluateConfig(limits={"accuracy": 0.9}))
    # baseline: prior 4/9, 3/9, 2/9 -> always a: F1 a = 2 * (1/3 * 1) / (1/3 + 1) = 0.5, b and c 0 -> macro 1/6
    assert b.baseline.metrics["macro_f1"] == pytest.approx(1 / 6)
    assert b.baseline.metrics["log_loss"] == pytest.approx(-(math.log(4 / 9) + math.log(3 / 9) + math.log(2 / 9)) / 3)
    # candidate macro F1 (0.5 + 0.8 + 2/3) / 3 = 0.6556 closes (0.6556 - 1/6) / (5/6) = 58.7% of the gap, but its
    # accuracy 4/6 is under the penguins.yaml bound 0.9
    macro = (0.5 + 0.8 + 2 / 3) / 3
    share = (macro - 1 / 6) / (5 / 6)
    assert _check(b, "baseline").passed and f"closes {share:.1%} of the gap" in _check(b, "baseline").detail
    assert not b.blessed and b.reasons[0] == "failed: accuracy 0.6667 < evaluate.limits.accuracy 0.9"
    assert b.reference is not None and set(b.reference.metrics) >= {"accuracy", "macro_f1", "log_loss"}
    assert b.reference.details["n"] == 6
    assert "Confusion matrix: reference (linear)" in b.to_html()


def test_evaluate_regression_end_to_end():
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "v": [1.0, 3.0, 5.0, 7.0]})
    test = pd.DataFrame({"x": [0.0, 2.0, 4.0], "v": [1.0, 5.0, 9.0]})
    candidate = model_contract.predictions(VALUE, np.array([1.0, 5.0, 8.0]), labels=test["v"].to_numpy())
    b = evaluate(VALUE, candidate, train, test, EvaluateConfig(primary_metric="rmse", limits={"rmse": 0.5}))
    # candidate errors 0, 0, 1: rmse sqrt(1/3); baseline (the train mean 4) errors -3, 1, 5: rmse sqrt(35/3)
    rmse, base = math.sqrt(1 / 3), math.sqrt(35 / 3)
    assert b.candidate.metrics["rmse"] == pytest.approx(rmse) and b.baseline.metrics["rmse"] == pytest.approx(base)
    # the Ridge reference predicts 1.6, 4.8, 8.0 (see test_reference_ridge_by_hand_and_exclude)
    assert b.reference.metrics["rmse"] == pytest.approx(math.sqrt((0.36 + 0.04 + 1.0) / 3))
    share = (rmse - base) / (0 - base)  # 83.1%
    assert f"closes {share:.1%} of the gap" in _check(b, "baseline").detail and _check(b, "baseline").passed
    assert not b.blessed and b.reasons[0] == "failed: primary metric rmse 0.5774 > evaluate.limits.rmse 0.5"


def test_evaluate_refuses_predictions_of_another_split_or_a_bad_config():
    with pytest.raises(ValueError, match="is not of this test split"):
        evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST.iloc[::-1], EvaluateConfig())
    with pytest.raises(ValueError, match="is not of this test split"):
        evaluate(YN, _binary_candidate().head(3), BINARY_TRAIN, BINARY_TEST, EvaluateConfig())
    with pytest.raises(ValueError, match="no label column 'y'"):
        evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST.drop(columns=["y"]), EvaluateConfig())
    with pytest.raises(EvaluateConfigError):  # before any work: the empty train split is never read
        evaluate(YN, _binary_candidate(), BINARY_TRAIN.head(0), BINARY_TEST, EvaluateConfig(primary_metric="rmse"))


# --- the champion from a real MLflow registry ----------------------------------------------------


def _register_sklearn(store: MlflowConfig, task: Task, train: pd.DataFrame, out) -> str:
    """Fit a scikit-learn pipeline on ``train``, save it with kfmlops metadata and register it; its version."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from kfmlops.model_contract import ModelInfo, save_estimator
    from kfmlops.provenance import generate_keypair
    from kfmlops.register import GateVerdict, Lineage, register
    from kfmlops.tracking import start_run

    x = train.drop(columns=[task.label])
    head = LogisticRegression() if task.is_classification else Ridge()
    estimator = make_pipeline(StandardScaler(), head).fit(x, train[task.label])
    save_estimator(estimator, out, ModelInfo(task, list(x.columns), "sklearn"), x)
    lineage = Lineage("fp", "hash", "data", gates={"evaluate": GateVerdict(True, ["blessed"])})
    return register(out, start_run(store, "champion", {}), store, lineage, x, task=task,
                    signing_key=generate_keypair()[0]).version


def test_champion_from_the_registry(mlflow_store, tmp_path):
    from mlflow.exceptions import MlflowException

    from kfmlops.register import promote
    from kfmlops.tracking import use

    use(mlflow_store)
    assert champion_version("adult") is None  # not registered
    with pytest.raises(MlflowException):
        champion_version("")  # an invalid name is another registry error: it propagates
    assert champion_scores(YN, "adult", BINARY_TEST) is None

    first = _register_sklearn(mlflow_store, YN, BINARY_TRAIN, tmp_path / "binary")
    assert champion_version("adult") is None  # registered, aliased challenger, no champion yet
    promote(mlflow_store, first)
    assert champion_version("adult") == first == "1"

    # the champion is a logistic regression increasing in x: roc_auc 1.0 on the test rows; the candidate's
    # 0.75 is 0.25 below it
    b = evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST, EvaluateConfig(), model_name="adult")
    assert b.champion_version == "1" and b.champion.scores.metrics["roc_auc"] == 1.0
    assert b.champion.scores.details["n"] == 4
    assert not b.blessed
    assert b.reasons[0] == "failed: roc_auc 0.7500 is 0.2500 below champion v1 (1.0000), > max_regression 0.01"
    assert "champion (v1)" in b.to_html() and b.to_json()["champion"]["roc_auc"] == 1.0
    assert evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST, EvaluateConfig(max_regression=0.25),
                    model_name="adult").blessed

    # a regression model as champion cannot score a binary task: reported and skipped, the check passes
    regression_train = pd.DataFrame({"x": [0.0, 1.0, 2.0], "v": [1.0, 3.0, 5.0]})
    promote(mlflow_store, _register_sklearn(mlflow_store, VALUE, regression_train, tmp_path / "regression"))
    b = evaluate(YN, _binary_candidate(), BINARY_TRAIN, BINARY_TEST, EvaluateConfig(), model_name="adult")
    assert b.champion_version == "2" and b.champion.scores is None
    assert b.champion.skipped.startswith("champion v2 cannot score this test split: ")
    assert "trained for a regression task" in b.champion.skipped
    assert b.blessed and _check(b, "champion").detail.startswith("champion v2 not compared: ")
    assert b.to_json()["champion_skipped"] == b.champion.skipped and "Champion v2 not compared" in b.to_html()


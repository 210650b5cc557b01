"""Fairness gate per task on tiny hand-built predictions datasets whose group figures are worked out by hand:
binary demographic parity and equalized odds, multiclass accuracy and selection rates, regression MAE and
mean prediction; thresholds per task, small and missing groups, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfmlops import model_contract
from kfmlops.config import FairnessConfig, PipelineConfig
from kfmlops.fairness import MISSING_GROUP, FairnessConfigError, FairnessResult, assess, check_config
from kfmlops.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
YN = Task("binary", "y", ("no", "yes"))
ABC = Task("multiclass", "k", ("a", "b", "c"))
VALUE = Task("regression", "v")


def _binary() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Eight rows; sex A (rows 0-3), B (rows 4-7); age young (0, 1, 6), old (2, 3, 7), missing (4, 5).

    row    0    1    2    3    4    5    6    7
    label  yes  yes  no   no   yes  yes  no   no
    pred   yes  yes  yes  no   yes  yes  no   no
    """
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.9, 0.1, 0.3])
    labels = ["yes", "yes", "no", "no", "yes", "yes", "no", "no"]
    predictions = model_contract.predictions(YN, np.column_stack([1 - p, p]), 0.5, labels)
    sensitive = pd.DataFrame({"sex": list("AAAABBBB"),
                              "age": ["young", "young", "old", "old", None, np.nan, "young", "old"]},
                             index=range(100, 108))  # the rows align by position, not by index
    return predictions, sensitive


def _rows(result: FairnessResult, feature: str) -> dict[str, dict]:
    return {r["group"]: r for r in next(f for f in result.features if f.feature == feature).by_group}


def _figures(result: FairnessResult, feature: str) -> dict[str, float]:
    return next(f for f in result.features if f.feature == feature).figures


# --- check_config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, setting, kind",
    [
        (YN, "max_accuracy_difference", "multiclass"),
        (YN, "max_mae_ratio", "regression"),
        (ABC, "max_equalized_odds_difference", "binary"),
        (ABC, "max_mean_prediction_difference", "regression"),
        (VALUE, "min_demographic_parity_ratio", "binary"),
        (VALUE, "max_accuracy_difference", "multiclass"),
    ],
)
def test_a_threshold_of_another_task_is_a_config_error(task, setting, kind):
    config = FairnessConfig(**{setting: 1.5 if setting == "max_mae_ratio" else 0.1})
    with pytest.raises(FairnessConfigError, match=rf"fairness\.{setting} \(a {kind} threshold\) set, but this is a "
                                                  rf"{task.kind} task"):
        check_config(task, config)
    with pytest.raises(FairnessConfigError):  # before anything is computed, even with no sensitive features
        assess(task, pd.DataFrame(), None, config)


def test_config_error_lists_every_foreign_threshold_and_the_tasks_own():
    config = FairnessConfig(max_mae_ratio=2.0, max_accuracy_difference=0.1, max_equalized_odds_difference=0.1)
    with pytest.raises(FairnessConfigError) as err:
        check_config(YN, config)
    assert str(err.value) == (
        "fairness.max_accuracy_difference (a multiclass threshold), fairness.max_mae_ratio (a regression threshold) "
        "set, but this is a binary task, whose thresholds are max_demographic_parity_difference, "
        "min_demographic_parity_ratio, max_equalized_odds_difference: unset it or set the binary ones")


@pytest.mark.parametrize("task", [YN, ABC, VALUE], ids=lambda t: t.kind)
def test_defaults_fit_every_task(task):
    check_config(task, FairnessConfig())


@pytest.mark.parametrize("name, task", [("adult.yaml", YN), ("penguins.yaml", ABC), ("cps1988.yaml", VALUE)])
def test_shipped_configs_fit_their_task_and_no_other(name, task):
    fairness = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / name).settings.fairness
    check_config(task, fairness)
    for other in {YN, ABC, VALUE} - {task}:
        with pytest.raises(FairnessConfigError):
            check_config(other, fairness)


# --- binary --------------------------------------------------------------------------------------


def test_binary_by_group_figures_by_hand():
    predictions, sensitive = _binary()
    result = assess(YN, predictions, sensitive, FairnessConfig(min_group_size=3))
    assert result.passed and result.task == "binary"
    assert result.reasons == ["no fairness thresholds set: figures for sex, age reported, nothing was checked"]
    assert [f.feature for f in result.features] == ["sex", "age"]

    sex = _rows(result, "sex")
    # A: predicted yes on 3 of 4; positives (0, 1) both yes; negatives (2, 3): one yes; right on 0, 1, 3
    assert sex["A"] == {"group": "A", "count": 4, "selection_rate": 0.75, "tpr": 1.0, "fpr": 0.5, "accuracy": 0.75,
                        "gated": True}
    # B: yes on rows 4, 5 (the positives), no on 6, 7 (the negatives): all right
    assert sex["B"] == {"group": "B", "count": 4, "selection_rate": 0.5, "tpr": 1.0, "fpr": 0.0, "accuracy": 1.0,
                        "gated": True}
    figures = _figures(result, "sex")
    assert figures["demographic_parity_difference"] == pytest.approx(0.75 - 0.5)
    assert figures["demographic_parity_ratio"] == pytest.approx(0.5 / 0.75)
    # TPR 1 vs 1 -> 0; FPR 0.5 vs 0 -> 0.5: the larger
    assert figures["equalized_odds_difference"] == pytest.approx(0.5)


def test_binary_min_group_size_and_missing_values():
    predictions, sensitive = _binary()
    result = assess(YN, predictions, sensitive, FairnessConfig(min_group_size=3))
    age = result.features[1]
    # None and NaN form one group; largest first, ties by name
    assert [(r["group"], r["count"], r["gated"]) for r in age.by_group] == [
        ("old", 3, True), ("young", 3, True), (MISSING_GROUP, 2, False)]
    rows = _rows(result, "age")
    # young rows 0, 1, 6: yes, yes, no for yes, yes, no -> selection 2/3, TPR 1, FPR 0
    assert rows["young"]["selection_rate"] == pytest.approx(2 / 3)
    assert rows["young"]["tpr"] == 1.0 and rows["young"]["fpr"] == 0.0
    # old rows 2, 3, 7, all negative: yes on row 2 only -> selection 1/3, FPR 1/3, no TPR
    assert rows["old"]["selection_rate"] == pytest.approx(1 / 3) and rows["old"]["fpr"] == pytest.approx(1 / 3)
    assert math.isnan(rows["old"]["tpr"])
    # missing rows 4, 5, both positive and predicted yes: selection 1, reported but not gated
    assert rows[MISSING_GROUP]["selection_rate"] == 1.0 and math.isnan(rows[MISSING_GROUP]["fpr"])

    figures = age.figures
    assert figures["demographic_parity_difference"] == pytest.approx(2 / 3 - 1 / 3)  # the missing group's 1 ignored
    assert figures["demographic_parity_ratio"] == pytest.approx((1 / 3) / (2 / 3))
    # TPR: only young has one among the gated groups -> no TPR spread; FPR 1/3 - 0
    assert figures["equalized_odds_difference"] == pytest.approx(1 / 3)

    # with min_group_size 2 the missing group is gated: selection 1 - 1/3; TPR young 1 vs missing 1 -> 0
    figures = assess(YN, predictions, sensitive, FairnessConfig(min_group_size=2)).features[1].figures
    assert figures["demographic_parity_difference"] == pytest.approx(2 / 3)
    assert figures["equalized_odds_difference"] == pytest.approx(1 / 3)


def test_binary_passing_verdict():
    predictions, sensitive = _binary()
    config = FairnessConfig(max_demographic_parity_difference=0.4, max_equalized_odds_difference=0.5,
                            min_group_size=3)
    result = assess(YN, predictions, sensitive, config)
    assert result.passed
    # sex: DPD 0.25, EOD 0.5 (the bound itself passes); age: DPD 1/3, EOD 1/3
    assert result.reasons == [
        "passed over sex, age (groups with >= 3 rows): sex demographic_parity_difference 0.2500 <= 0.4; "
        "sex equalized_odds_difference 0.5000 <= 0.5; age demographic_parity_difference 0.3333 <= 0.4; "
        "age equalized_odds_difference 0.3333 <= 0.5"]
    statuses = {c["figure"]: c["status"] for c in result.features[0].checks}
    assert statuses == {"demographic_parity_difference": "pass", "demographic_parity_ratio": "not set",
                        "equalized_odds_difference": "pass"}


def test_binary_failing_verdict_names_the_groups_at_either_end():
    predictions, sensitive = _binary()
    config = FairnessConfig(max_equalized_odds_difference=0.4, min_demographic_parity_ratio=0.6, min_group_size=3)
    result = assess(YN, predictions, sensitive, config)
    assert not result.passed
    # sex EOD 0.5 > 0.4 (FPR A 0.5 vs B 0); age ratio (1/3) / (2/3) = 0.5 < 0.6; sex ratio 2/3 and age EOD 1/3 pass
    assert result.reasons == [
        "sex: equalized_odds_difference 0.5000 > max_equalized_odds_difference 0.4 (fpr A 0.5000 vs B 0.0000)",
        "age: demographic_parity_ratio 0.5000 < min_demographic_parity_ratio 0.6 "
        "(selection_rate young 0.6667 vs old 0.3333)"]
    checks = {(f.feature, c["figure"]): c["status"] for f in result.features for c in f.checks}
    assert checks[("sex", "demographic_parity_ratio")] == "pass"
    assert checks[("age", "equalized_odds_difference")] == "pass"


def test_a_set_threshold_that_cannot_be_computed_fails_closed():
    predictions, sensitive = _binary()
    # min_group_size 5: no group of either feature is gated
    result = assess(YN, predictions, sensitive, FairnessConfig(max_demographic_parity_difference=0.9, min_group_size=5))
    assert not result.passed
    assert len(result.reasons) == 2 and all(r.startswith("not checked, so failed: ") for r in result.reasons)
    assert "sex: demographic_parity_difference (max_demographic_parity_difference 0.9) cannot be computed: only 0 of " \
           "its 2 groups have >= 5 test rows" in result.reasons[0]
    assert math.isnan(result.features[0].figures["demographic_parity_difference"])
    assert result.figures() == {}  # NaN figures are left out
    assert result.features[0].checks[0]["status"] == "not computed"

    # age with min_group_size 3: old has no positives, so only young has a TPR, but FPR compares (1/3 <= 0.5)
    assert assess(YN, predictions, sensitive[["age"]],
                  FairnessConfig(max_equalized_odds_difference=0.5, min_group_size=3)).passed


def test_equalized_odds_with_no_group_pair_to_compare_fails_closed():
    # group p holds only positives (a TPR, no FPR), group n only negatives (an FPR, no TPR)
    predictions = model_contract.predictions(YN, np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]),
                                             labels=["yes", "yes", "no", "no"])
    sensitive = pd.DataFrame({"g": ["p", "p", "n", "n"]})
    result = assess(YN, predictions, sensitive, FairnessConfig(max_equalized_odds_difference=0.5, min_group_size=2))
    rows = _rows(result, "g")
    assert rows["p"]["tpr"] == 0.5 and math.isnan(rows["p"]["fpr"])  # yes on row 0 of rows 0, 1
    assert rows["n"]["fpr"] == 0.5 and math.isnan(rows["n"]["tpr"])  # yes on row 2 of rows 2, 3
    assert math.isnan(result.features[0].figures["equalized_odds_difference"])
    assert result.features[0].figures["demographic_parity_difference"] == 0.0  # 1/2 each
    assert not result.passed
    assert result.reasons == ["not checked, so failed: g: equalized_odds_difference (max_equalized_odds_difference "
                              "0.5) cannot be computed: no two gated groups have a value of tpr or fpr to compare"]


def test_no_sensitive_features():
    predictions, _ = _binary()
    assert assess(YN, predictions, None, FairnessConfig()).reasons == [
        "no sensitive features configured: nothing was checked"]
    assert assess(YN, predictions, pd.DataFrame(index=range(8)), FairnessConfig()).passed
    # a threshold that gates nothing fails the gate
    result = assess(YN, predictions, None, FairnessConfig(max_equalized_odds_difference=0.2))
    assert not result.passed and result.features == []
    assert "['max_equalized_odds_difference'] are set but no sensitive features were given" in result.reasons[0]
    # a threshold of another task is refused rather than ignored
    with pytest.raises(FairnessConfigError):
        assess(YN, predictions, None, FairnessConfig(max_mae_ratio=2.0))


def test_bad_sensitive_frames_are_refused():
    predictions, sensitive = _binary()
    with pytest.raises(ValueError, match="length mismatch: 8 predictions but 7 sensitive-feature rows"):
        assess(YN, predictions, sensitive.head(7), FairnessConfig())
    with pytest.raises(ValueError, match=r"duplicate sensitive columns: \['sex'\]"):
        assess(YN, predictions, sensitive[["sex", "sex"]], FairnessConfig())


# --- multiclass ----------------------------------------------------------------------------------


def _multiclass() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ten rows; sex F (0-3), M (4-7), missing (8, 9).

    row    0  1  2  3  4  5  6  7  8  9
    label  a  b  c  a  a  b  c  c  b  b
    pred   a  b  c  b  a  a  a  c  b  b
    """
    predicted = list("abcbaaacbb")
    proba = np.array([[0.8 if c == p else 0.1 for c in ABC.classes] for p in predicted])
    predictions = model_contract.predictions(ABC, proba, labels=list("abcaabccbb"))
    assert predictions["prediction"].tolist() == predicted
    return predictions, pd.DataFrame({"sex": ["F"] * 4 + ["M"] * 4 + [None, None]})


def test_multiclass_accuracy_and_selection_rate_by_group():
    predictions, sensitive = _multiclass()
    result = assess(ABC, predictions, sensitive, FairnessConfig(min_group_size=3))
    rows = _rows(result, "sex")
    # F: right on 0, 1, 2 -> 3/4; predicted a once, b twice, c once
    assert rows["F"] == {"group": "F", "count": 4, "accuracy": 0.75, "selection_rate:a": 0.25,
                         "selection_rate:b": 0.5, "selection_rate:c": 0.25, "gated": True}
    # M: right on 4, 7 -> 2/4; predicted a three times, c once
    assert rows["M"] == {"group": "M", "count": 4, "accuracy": 0.5, "selection_rate:a": 0.75,
                         "selection_rate:b": 0.0, "selection_rate:c": 0.25, "gated": True}
    assert rows[MISSING_GROUP]["count"] == 2 and not rows[MISSING_GROUP]["gated"]
    assert rows[MISSING_GROUP]["accuracy"] == 1.0 and rows[MISSING_GROUP]["selection_rate:b"] == 1.0
    assert _figures(result, "sex") == {"accuracy_difference": pytest.approx(0.75 - 0.5)}
    # gated, the missing group's accuracy 1 is the top: 1 - 0.5
    assert assess(ABC, predictions, sensitive, FairnessConfig(min_group_size=2)).features[0].figures == {
        "accuracy_difference": pytest.approx(0.5)}


def test_multiclass_verdicts():
    predictions, sensitive = _multiclass()
    failed = assess(ABC, predictions, sensitive, FairnessConfig(max_accuracy_difference=0.2, min_group_size=3))
    assert not failed.passed
    assert failed.reasons == ["sex: accuracy_difference 0.2500 > max_accuracy_difference 0.2 (accuracy F 0.7500 vs "
                              "M 0.5000)"]
    passed = assess(ABC, predictions, sensitive, FairnessConfig(max_accuracy_difference=0.25, min_group_size=3))
    assert passed.passed
    assert passed.reasons == ["passed over sex (groups with >= 3 rows): sex accuracy_difference 0.2500 <= 0.25"]


# --- regression ----------------------------------------------------------------------------------


def _regression(y_predictions: list[float]) -> pd.DataFrame:
    return model_contract.predictions(VALUE, np.array([12.0, 18.0, 30.0, *y_predictions]),
                                      labels=[10.0, 20.0, 30.0, 10.0, 20.0, 30.0])


GROUPS = pd.DataFrame({"ethnicity": ["x", "x", "x", "y", "y", "y"]})


def test_regression_mae_and_mean_prediction_by_group():
    predictions = _regression([14.0, 26.0, 30.0])
    result = assess(VALUE, predictions, GROUPS, FairnessConfig(min_group_size=3))
    rows = _rows(result, "ethnicity")
    # x: predictions 12, 18, 30 for 10, 20, 30 -> errors 2, 2, 0 -> MAE 4/3; mean prediction 60/3 = 20
    assert rows["x"]["mae"] == pytest.approx(4 / 3)
    assert rows["x"]["mean_prediction"] == pytest.approx(20.0) and rows["x"]["mean_label"] == pytest.approx(20.0)
    # y: predictions 14, 26, 30 -> errors 4, 6, 0 -> MAE 10/3; mean prediction 70/3
    assert rows["y"]["mae"] == pytest.approx(10 / 3) and rows["y"]["mean_prediction"] == pytest.approx(70 / 3)
    assert rows["y"]["mean_label"] == pytest.approx(20.0)
    figures = _figures(result, "ethnicity")
    assert figures["mae_ratio"] == pytest.approx((10 / 3) / (4 / 3))  # 2.5
    assert figures["mean_prediction_difference"] == pytest.approx(70 / 3 - 20)  # 10/3


def test_regression_verdicts():
    predictions = _regression([14.0, 26.0, 30.0])
    # the cps1988.yaml bound: the worse group's MAE at most 1.6 times the better one's; 2.5 fails
    failed = assess(VALUE, predictions, GROUPS, FairnessConfig(max_mae_ratio=1.6, max_mean_prediction_difference=5.0,
                                                               min_group_size=3))
    assert not failed.passed
    assert failed.reasons == ["ethnicity: mae_ratio 2.5000 > max_mae_ratio 1.6 (mae y 3.3333 vs x 1.3333)"]
    passed = assess(VALUE, predictions, GROUPS, FairnessConfig(max_mae_ratio=2.5, max_mean_prediction_difference=3.5,
                                                               min_group_size=3))
    assert passed.passed
    assert passed.reasons == ["passed over ethnicity (groups with >= 3 rows): ethnicity mae_ratio 2.5000 <= 2.5; "
                              "ethnicity mean_prediction_difference 3.3333 <= 3.5"]
    # 10/3 > 3
    assert not assess(VALUE, predictions, GROUPS, FairnessConfig(max_mean_prediction_difference=3.0,
                                                                 min_group_size=3)).passed


def test_regression_mae_ratio_with_a_perfect_group():
    # y predicted exactly: MAE 0 against x's 4/3 -> ratio infinite, which fails any bound
    predictions = _regression([10.0, 20.0, 30.0])
    result = assess(VALUE, predictions, GROUPS, FairnessConfig(max_mae_ratio=100.0, min_group_size=3))
    assert math.isinf(result.features[0].figures["mae_ratio"]) and not result.passed
    assert result.reasons[0].startswith("ethnicity: mae_ratio inf > max_mae_ratio 100")
    assert result.figures() == {"ethnicity.mean_prediction_difference": pytest.approx(0.0)}  # inf left out
    assert result.to_json()["features"][0]["mae_ratio"] is None
    assert ">inf<" in result.to_html()
    # both groups perfect: the ratio is 1
    perfect = model_contract.predictions(VALUE, np.array([10.0, 20.0, 10.0, 20.0]), labels=[10.0, 20.0, 10.0, 20.0])
    both = assess(VALUE, perfect, pd.DataFrame({"g": [1, 1, 2, 2]}), FairnessConfig(max_mae_ratio=1.0, min_group_size=2))
    assert both.passed and both.features[0].figures["mae_ratio"] == 1.0
    assert [r["group"] for r in both.features[0].by_group] == ["1", "2"]  # groups are named as text


# --- FairnessResult ------------------------------------------------------------------------------


def test_result_json_figures_and_html():
    predictions, sensitive = _binary()
    config = FairnessConfig(max_equalized_odds_difference=0.4, min_group_size=3)
    result = assess(YN, predictions, sensitive, config)
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))  # NaN TPRs become null
    assert data["passed"] is False and data["task"] == "binary" and data["reasons"] == result.reasons
    assert data["thresholds"] == config.model_dump(mode="json")
    assert [f["feature"] for f in data["features"]] == ["sex", "age"]
    age = data["features"][1]
    assert age["by_group"][0] == {"group": "old", "count": 3, "selection_rate": pytest.approx(1 / 3), "tpr": None,
                                  "fpr": pytest.approx(1 / 3), "accuracy": pytest.approx(2 / 3), "gated": True}
    assert age["equalized_odds_difference"] == pytest.approx(1 / 3)
    assert age["checks"][2] == {"figure": "equalized_odds_difference", "value": pytest.approx(1 / 3),
                                "threshold_name": "max_equalized_odds_difference", "threshold": 0.4, "kind": "max",
                                "status": "pass"}

    assert result.figures() == {
        "sex.demographic_parity_difference": pytest.approx(0.25), "sex.demographic_parity_ratio": pytest.approx(2 / 3),
        "sex.equalized_odds_difference": pytest.approx(0.5), "age.demographic_parity_difference": pytest.approx(1 / 3),
        "age.demographic_parity_ratio": pytest.approx(0.5), "age.equalized_odds_difference": pytest.approx(1 / 3)}

    page = result.to_html()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert '<span class="fail">FAIL</span> (binary task)' in page
    assert "<td>max_equalized_odds_difference</td><td>0.4000</td>" in page
    assert "<td>min_demographic_parity_ratio</td><td>not checked</td>" in page
    assert "<td>max_accuracy_difference</td>" not in page  # only the task's own thresholds
    assert "sex: by group" in page and "age: disparities over gated groups" in page
    assert f"<td>{MISSING_GROUP}</td><td>2</td>" in page and "no (&lt; 3 rows)" in page
    assert "<td>equalized_odds_difference</td><td>0.5000</td><td>&lt;= 0.4</td><td><span class=\"fail\">FAIL" in page


def test_result_html_per_task_lists_its_thresholds():
    predictions, sensitive = _multiclass()
    page = assess(ABC, predictions, sensitive, FairnessConfig(max_accuracy_difference=0.3, min_group_size=3)).to_html()
    assert '<span class="pass">PASS</span> (multiclass task)' in page
    assert "<td>max_accuracy_difference</td><td>0.3000</td>" in page and "max_equalized_odds_difference" not in page
    assert "<th>selection_rate:a</th>" in page
    page = assess(VALUE, _regression([14.0, 26.0, 30.0]), GROUPS, FairnessConfig(min_group_size=3)).to_html()
    assert "<td>max_mae_ratio</td><td>not checked</td>" in page and "<th>mean_label</th>" in page

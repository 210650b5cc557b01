"""Fairness gate on UCI Adult: per-group figures, thresholds, small-group exclusion, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference
from sklearn.linear_model import LogisticRegression

from kfmlops.config import FairnessConfig
from kfmlops.fairness import MISSING_GROUP, assess

CATS, NUMS = ["relationship", "education", "occupation"], ["age", "hours_per_week"]
NO_GATES = dict(max_demographic_parity_difference=None, min_demographic_parity_ratio=None,
                max_equalized_odds_difference=None)


@pytest.fixture(scope="module")
def case(adult_train, adult_test):
    """Adult test split with 0/1 predictions of a quick LogisticRegression on a few one-hot columns."""
    train, test = adult_train, adult_test

    def design(frame):
        x = pd.get_dummies(frame[CATS].fillna("?"), dtype=float)
        for name in NUMS:
            x[name] = frame[name].astype(float)
        return x

    x_train = design(train)
    x_test = design(test).reindex(columns=x_train.columns, fill_value=0.0)
    mean, std = x_train.mean(), x_train.std() + 1e-9
    model = LogisticRegression(max_iter=1000).fit((x_train - mean) / std, train["y"])
    pred = (model.predict_proba((x_test - mean) / std)[:, 1] >= 0.5).astype(int)
    return test["y"].to_numpy(), pred, test[["sex", "race"]].reset_index(drop=True)


def test_by_group_matches_hand_computation(case):
    y, pred, sensitive = case
    result = assess(y, pred, sensitive, FairnessConfig(**NO_GATES))
    assert result.passed
    assert [f.feature for f in result.features] == ["sex", "race"]
    sex = result.features[0]
    rows = {r["group"]: r for r in sex.by_group}
    assert set(rows) == {"Male", "Female"}

    female = (sensitive["sex"] == "Female").to_numpy()
    yf, pf = y[female], pred[female]
    row = rows["Female"]
    assert row["count"] == int(female.sum()) == 5421
    assert row["selection_rate"] == pytest.approx(pf.mean(), abs=1e-12)
    assert row["tpr"] == pytest.approx(pf[yf == 1].mean(), abs=1e-12)
    assert row["fpr"] == pytest.approx(pf[yf == 0].mean(), abs=1e-12)
    assert row["accuracy"] == pytest.approx((pf == yf).mean(), abs=1e-12)
    assert row["gated"] is True

    male = ~female
    rate_m, rate_f = pred[male].mean(), pf.mean()
    assert sex.demographic_parity_difference == pytest.approx(abs(rate_m - rate_f), abs=1e-12)
    assert sex.demographic_parity_ratio == pytest.approx(min(rate_m, rate_f) / max(rate_m, rate_f), abs=1e-12)
    eo = max(
        abs(pred[male & (y == 1)].mean() - pf[yf == 1].mean()),
        abs(pred[male & (y == 0)].mean() - pf[yf == 0].mean()),
    )
    assert sex.equalized_odds_difference == pytest.approx(eo, abs=1e-12)
    # and with fairlearn's own functions (every sex group is gated)
    s = sensitive["sex"]
    assert sex.demographic_parity_difference == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=s))
    assert sex.demographic_parity_ratio == pytest.approx(demographic_parity_ratio(y, pred, sensitive_features=s))
    assert sex.equalized_odds_difference == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=s))


def test_threshold_the_model_breaks_fails_naming_feature_and_figure(case):
    y, pred, sensitive = case
    result = assess(y, pred, sensitive[["sex"]], FairnessConfig(max_demographic_parity_difference=0.05))
    assert not result.passed
    dpd = result.features[0].demographic_parity_difference
    assert dpd > 0.05
    assert len(result.reasons) == 1
    reason = result.reasons[0]
    assert reason.startswith(f"sex: demographic_parity_difference {dpd:.4f} > max_demographic_parity_difference 0.05")
    assert "Male" in reason and "Female" in reason

    result = assess(y, pred, sensitive[["sex"]], FairnessConfig(min_demographic_parity_ratio=0.8))
    ratio = result.features[0].demographic_parity_ratio
    assert not result.passed and result.reasons[0].startswith(
        f"sex: demographic_parity_ratio {ratio:.4f} < min_demographic_parity_ratio 0.8"
    )


def test_loose_thresholds_pass_with_the_figures(case):
    y, pred, sensitive = case
    config = FairnessConfig(max_demographic_parity_difference=0.5, min_demographic_parity_ratio=0.1,
                            max_equalized_odds_difference=0.5)
    result = assess(y, pred, sensitive, config)
    assert result.passed and len(result.reasons) == 1
    sex = result.features[0]
    assert result.reasons[0].startswith("passed over sex, race")
    assert f"sex demographic_parity_difference {sex.demographic_parity_difference:.4f} <= 0.5" in result.reasons[0]

    result = assess(y, pred, sensitive, FairnessConfig(**NO_GATES))
    assert result.passed and "nothing was checked" in result.reasons[0]


def test_small_groups_are_reported_but_excluded_from_the_gate(case):
    y, pred, sensitive = case
    race = sensitive[["race"]]
    everyone = assess(y, pred, race, FairnessConfig(min_group_size=1)).features[0]
    result = assess(y, pred, race, FairnessConfig(min_group_size=200, max_equalized_odds_difference=None))
    feature = result.features[0]
    gated = {r["group"]: r["gated"] for r in feature.by_group}
    counts = {r["group"]: r["count"] for r in feature.by_group}
    assert gated == {g: counts[g] >= 200 for g in counts}
    assert not gated["Amer-Indian-Eskimo"] and not gated["Other"] and gated["White"] and gated["Black"]
    assert sum(counts.values()) == len(y)  # small groups still reported

    # figures equal fairlearn's on the gated groups' rows only
    keep = race["race"].isin([g for g, ok in gated.items() if ok]).to_numpy()
    s = race["race"][keep]
    assert feature.demographic_parity_difference == pytest.approx(
        demographic_parity_difference(y[keep], pred[keep], sensitive_features=s))
    assert feature.equalized_odds_difference == pytest.approx(
        equalized_odds_difference(y[keep], pred[keep], sensitive_features=s))
    assert feature.equalized_odds_difference < everyone.equalized_odds_difference

    # a limit only the small groups break: fails when they count, passes when they are excluded
    limit = round((feature.equalized_odds_difference + everyone.equalized_odds_difference) / 2, 4)
    assert not assess(y, pred, race, FairnessConfig(min_group_size=1, max_equalized_odds_difference=limit)).passed
    assert assess(y, pred, race, FairnessConfig(min_group_size=200, max_equalized_odds_difference=limit)).passed


def test_missing_values_form_their_own_group_and_undefined_rates_are_nan():
    y = np.array([1, 0, 1, 0, 0, 0, 1, 1])
    pred = np.array([1, 0, 0, 1, 0, 1, 1, 1])
    sensitive = pd.DataFrame({"g": ["a", "a", "a", "a", None, None, "b", "b"]})
    result = assess(y, pred, sensitive, FairnessConfig(min_group_size=2))
    rows = {r["group"]: r for r in result.features[0].by_group}
    assert set(rows) == {"a", "b", MISSING_GROUP}
    assert rows[MISSING_GROUP]["count"] == 2 and rows[MISSING_GROUP]["selection_rate"] == 0.5
    assert math.isnan(rows[MISSING_GROUP]["tpr"]) and rows[MISSING_GROUP]["fpr"] == 0.5  # no positives there
    assert math.isnan(rows["b"]["fpr"]) and rows["b"]["tpr"] == 1.0  # no negatives there
    feature = result.features[0]
    # TPR over a and b only (missing has none), FPR over a and missing: NaNs skipped, not counted as 0
    assert feature.equalized_odds_difference == pytest.approx(max(1.0 - 0.5, 0.5 - 0.5))
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    missing = next(r for r in data["features"][0]["by_group"] if r["group"] == MISSING_GROUP)
    assert missing["tpr"] is None


def test_a_threshold_that_fewer_than_two_gated_groups_leave_unchecked_fails_the_gate():
    y = np.array([1, 0, 1, 0, 1])
    pred = np.array([1, 0, 0, 0, 1])
    sensitive = pd.DataFrame({"g": ["a", "a", "a", "a", "b"]})
    result = assess(y, pred, sensitive, FairnessConfig(min_group_size=2, max_demographic_parity_difference=0.1))
    feature = result.features[0]
    assert math.isnan(feature.demographic_parity_difference) and math.isnan(feature.equalized_odds_difference)
    assert not result.passed
    assert result.reasons == [
        "not checked, so failed: g: demographic_parity_difference (max_demographic_parity_difference 0.1) cannot be "
        "computed: only 1 of its 2 groups have >= 2 test rows (fairness.min_group_size) and the figure compares two; "
        "lower fairness.min_group_size or test on more rows"
    ]
    assert json.loads(json.dumps(result.to_json(), allow_nan=False))["features"][0]["demographic_parity_ratio"] is None
    # every group under min_group_size: the same, and no NaN figure reaches the metric stores
    unchecked = assess(y, pred, sensitive, FairnessConfig(min_group_size=10, max_demographic_parity_difference=0.1))
    assert not unchecked.passed and unchecked.figures() == {}
    # selection rates a 1/4, b 1/1; TPR a 1/2, b 1/1 (FPR of b undefined)
    assert assess(y, pred, sensitive, FairnessConfig(min_group_size=1)).figures() == {
        "g.demographic_parity_difference": 0.75, "g.demographic_parity_ratio": 0.25, "g.equalized_odds_difference": 0.5,
    }
    # no threshold set: reported, not gated
    assert assess(y, pred, sensitive, FairnessConfig(min_group_size=10)).passed


def test_thresholds_with_no_sensitive_features_fail_the_gate_saying_why():
    y, pred = np.array([0, 1, 1]), np.array([0, 1, 0])
    for sensitive in (pd.DataFrame(), pd.DataFrame(index=range(3)), None):
        result = assess(y, pred, sensitive, FairnessConfig(max_demographic_parity_difference=0.0))
        assert not result.passed and result.features == []
        assert result.reasons == [
            "fairness thresholds ['max_demographic_parity_difference'] are set but no sensitive features were given, "
            "so nothing could be checked: list the columns to slice by in data.sensitive_features"
        ]
        result = assess(y, pred, sensitive, FairnessConfig())
        assert result.passed and "nothing was checked" in result.reasons[0]


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="length mismatch: 3 labels but 2 predictions"):
        assess(np.array([0, 1, 1]), np.array([0, 1]), pd.DataFrame({"g": ["a"] * 3}), FairnessConfig())
    with pytest.raises(ValueError, match="length mismatch: 3 labels but 4 sensitive-feature rows"):
        assess(np.array([0, 1, 1]), np.array([0, 1, 1]), pd.DataFrame({"g": ["a"] * 4}), FairnessConfig())
    with pytest.raises(ValueError, match="y_pred must be 0/1"):
        assess(np.array([0, 1]), np.array([0.2, 0.7]), pd.DataFrame({"g": ["a", "b"]}), FairnessConfig())


def test_json_and_html(case):
    y, pred, sensitive = case
    result = assess(y, pred, sensitive, FairnessConfig(max_demographic_parity_difference=0.05, max_equalized_odds_difference=0.5))
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["passed"] is False and data["thresholds"]["max_demographic_parity_difference"] == 0.05
    assert [f["feature"] for f in data["features"]] == ["sex", "race"]
    assert data["features"][0]["by_group"][0].keys() == {
        "group", "count", "selection_rate", "tpr", "fpr", "accuracy", "gated"}

    page = result.to_html()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "sex: by group" in page and "race: disparities over gated groups" in page
    assert 'class="fail">FAIL' in page and 'class="pass">PASS' in page and "not set" in page  # DP fails, EO passes, ratio unset
    assert "Amer-Indian-Eskimo" in page

"""The validate stage on real data (UCI Adult through the ingest stage) with real Great Expectations."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kfmlops.config import Expectation, ValidateConfig
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError
from kfmlops.validate import (
    MAX_INFERRED_CATEGORIES,
    DataValidationError,
    build_suite,
    validate,
)

LABEL = "y"
TASK = Task("binary", LABEL, ("<=50K", ">50K"))
STRICT = ValidateConfig(inferred_severity="error")


@pytest.fixture(scope="module")
def case(adult_train, adult_test) -> dict[str, pd.DataFrame]:
    return {"train": adult_train, "test": adult_test}


@pytest.fixture(scope="module")
def corrupted(case) -> pd.DataFrame:
    """The test split with negative ages, an unseen workclass, no occupations and no hours_per_week."""
    bad = case["test"].copy()
    bad.loc[:999, "age"] = -5
    bad.loc[:1999, "workclass"] = "Martian"
    bad["occupation"] = None
    return bad.drop(columns=["hours_per_week"])


def by_key(suite: list[Expectation]) -> dict[tuple[str, str | None], Expectation]:
    return {(e.type, e.kwargs.get("column")): e for e in suite}


def test_importing_the_module_does_not_import_great_expectations():
    code = "import sys, kfmlops.validate; sys.exit('great_expectations' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_build_suite_infers_types_ranges_categories_and_null_rates(case):
    train = case["train"]
    declared = Expectation(type="expect_column_to_exist", kwargs={"column": "age"})
    suite = build_suite(ValidateConfig(expectations=[declared]), train, TASK)
    assert suite[0] == declared
    inferred = by_key(suite[1:])
    assert {e.severity for e in suite[1:]} == {"warning"}

    assert inferred["expect_table_columns_to_match_set", None].kwargs["column_set"] == list(train.columns)
    age = inferred["expect_column_values_to_be_between", "age"].kwargs
    assert (age["min_value"], age["max_value"]) == pytest.approx((17 - 7.3, 90 + 7.3))
    assert "int64" in inferred["expect_column_values_to_be_in_type_list", "age"].kwargs["type_list"]
    workclass = inferred["expect_column_values_to_be_in_set", "workclass"].kwargs
    assert sorted(workclass["value_set"]) == sorted(train["workclass"].dropna().unique())
    assert workclass["mostly"] == 0.99
    null_share = train["workclass"].isna().mean()
    assert inferred["expect_column_values_to_not_be_null", "workclass"].kwargs["mostly"] == pytest.approx(
        1 - (null_share + 0.05)
    )
    assert "str" in inferred["expect_column_values_to_be_in_type_list", "sex"].kwargs["type_list"]
    # The label gets only not-null and {0, 1}.
    assert {k for k in inferred if k[1] == LABEL} == {
        ("expect_column_values_to_not_be_null", LABEL),
        ("expect_column_values_to_be_in_set", LABEL),
    }
    assert inferred["expect_column_values_to_be_in_set", LABEL].kwargs["value_set"] == ["<=50K", ">50K"]
    assert inferred["expect_column_values_to_not_be_null", LABEL].kwargs == {"column": LABEL}


def test_build_suite_edge_cases():
    frame = pd.DataFrame({
        "mostly_null": [None] * 97 + ["a", "b", "c"],
        "flag": [True, False] * 50,
        LABEL: ["<=50K", ">50K"] * 50,
    })
    wide = pd.DataFrame({"ids": [f"id-{i}" for i in range(MAX_INFERRED_CATEGORIES + 1)], LABEL: 0})
    suite = by_key(build_suite(ValidateConfig(), frame, TASK))
    assert ("expect_column_values_to_not_be_null", "mostly_null") not in suite  # mostly would be <= 0
    assert ("expect_column_values_to_be_in_set", "mostly_null") in suite
    assert suite["expect_column_values_to_be_in_type_list", "flag"].kwargs["type_list"] == ["bool", "BooleanDtype"]
    assert ("expect_column_values_to_be_between", "flag") not in suite
    assert ("expect_column_values_to_be_in_set", "ids") not in by_key(build_suite(ValidateConfig(), wide, TASK))

    declared = [Expectation(type="expect_column_to_exist", kwargs={"column": "x"})]
    assert build_suite(ValidateConfig(expectations=declared, infer_from_train=False), None, TASK) == declared
    with pytest.raises(ConfigError, match="reference"):
        build_suite(ValidateConfig(), None, TASK)
    with pytest.raises(ConfigError, match="label column 'target'"):
        build_suite(ValidateConfig(), frame, Task("binary", "target", ("0", "1")))


def test_adult_train_and_test_pass_the_inferred_suite_at_error_severity(case):
    result = validate(case, STRICT, TASK)
    suite = build_suite(STRICT, case["train"], TASK)
    assert len(result.outcomes) == 2 * len(suite)
    assert {o.split for o in result.outcomes} == {"train", "test"}
    assert result.passed, [o.describe() for o in result.errors]
    assert result.warnings == []
    result.raise_for_errors()
    summary = json.loads(json.dumps(result.to_json()))
    assert summary["passed"] is True
    assert summary["splits"]["test"] == {"evaluated": len(suite), "errors": 0, "warnings": 0}


def test_a_declared_expectation_the_data_breaks_fails_and_names_it(case):
    age_cap = Expectation(
        type="expect_column_values_to_be_between", kwargs={"column": "age", "min_value": 0, "max_value": 60}
    )
    result = validate(case, ValidateConfig(expectations=[age_cap], infer_from_train=False), TASK)
    assert not result.passed
    assert [(o.split, o.column) for o in result.errors] == [("train", "age"), ("test", "age")]
    for outcome in result.errors:
        expected = (case[outcome.split]["age"] > 60).mean() * 100
        assert outcome.unexpected_percent == pytest.approx(expected)  # a percentage, not a share
        assert all(v > 60 for v in outcome.observed)
    with pytest.raises(DataValidationError) as caught:
        result.raise_for_errors()
    message = str(caught.value)
    assert "test: expect_column_values_to_be_between on column 'age'" in message
    assert f"{result.errors[1].unexpected_percent:.2f}% unexpected" in message


def test_a_corrupted_split_is_caught_with_each_problem_named(case, corrupted):
    result = validate({"train": case["train"], "test": corrupted}, STRICT, TASK)
    assert {o.split for o in result.errors} == {"test"}
    failed = {(o.type, o.column): o for o in result.errors}
    assert failed["expect_column_values_to_be_between", "age"].observed == [-5]
    assert failed["expect_column_values_to_be_in_set", "workclass"].observed == ["Martian"]
    assert failed["expect_column_values_to_not_be_null", "occupation"].unexpected_percent == 100.0
    assert failed["expect_table_columns_to_match_set", None].observed["mismatched"] == {"missing": ["hours_per_week"]}
    assert failed["expect_column_values_to_be_in_type_list", "hours_per_week"].observed == {
        "exception": "column 'hours_per_week' does not exist"
    }
    assert set(failed) == {
        ("expect_column_values_to_be_between", "age"),
        ("expect_column_values_to_be_in_set", "workclass"),
        ("expect_column_values_to_not_be_null", "occupation"),
        ("expect_table_columns_to_match_set", None),
        ("expect_column_values_to_be_in_type_list", "hours_per_week"),
        ("expect_column_values_to_be_between", "hours_per_week"),
        ("expect_column_values_to_not_be_null", "hours_per_week"),
    }

    with pytest.raises(DataValidationError) as caught:
        result.raise_for_errors()
    message = str(caught.value)
    for text in ("column 'age'", '["Martian"]', "column 'occupation'", '"missing": ["hours_per_week"]'):
        assert text in message

    json.dumps(result.to_json())
    html = result.to_html()
    assert html.count('class="fail">FAIL') >= 2 * len(failed)  # in the failures table and in the full one
    assert "Martian" in html and "hours_per_week" in html


def test_warning_level_failures_do_not_fail(case, corrupted):
    result = validate({"test": corrupted}, ValidateConfig(), TASK, reference=case["train"])
    assert result.passed
    assert len(result.warnings) == 7 and result.errors == []
    result.raise_for_errors()
    assert 'class="warn">WARN' in result.to_html()
    assert result.to_json()["warnings"] == 7


def test_an_unknown_expectation_or_bad_arguments_are_config_errors(case):
    small = {"train": case["train"].head(100)}
    typo = Expectation(type="expect_column_value_to_be_between", kwargs={"column": "age", "min_value": 0})
    with pytest.raises(ConfigError, match=r"expectations\[0\].*'expect_column_value_to_be_between'.*did you mean "
                                          r"expect_column_values_to_be_between"):
        validate(small, ValidateConfig(expectations=[typo]), TASK)
    bad_kwargs = Expectation(type="expect_column_values_to_be_between", kwargs={"column": "age", "minimum": 0})
    with pytest.raises(ConfigError, match=r"expectations\[0\] expect_column_values_to_be_between: invalid arguments"):
        validate(small, ValidateConfig(expectations=[bad_kwargs]), TASK)


def test_every_dtype_family_passes_its_own_inferred_suite_and_catches_a_type_change():
    frame = pd.DataFrame({
        "count": pd.array([1, None, 3, 4], dtype="Int64"),
        "score": [0.5, np.nan, 1.5, 2.0],
        "flag": [True, False, True, False],
        "when": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"]),
        "name": pd.array(["a", None, "b", "a"], dtype="string"),
        "city": ["x", "y", None, "x"],
        LABEL: ["<=50K", ">50K", "<=50K", ">50K"],
    })
    config = ValidateConfig(inferred_severity="error", null_rate_tolerance=0.3)
    suite = build_suite(config, frame, TASK)
    typed = {e.kwargs["column"] for e in suite if e.type == "expect_column_values_to_be_in_type_list"}
    assert typed == set(frame.columns) - {LABEL}

    changed = frame.assign(score=["0.5", "1", "2", "3"], flag=[1.0, 0.0, 1.0, 0.0])
    result = validate({"train": frame, "changed": changed}, config, TASK)
    assert [o for o in result.outcomes if o.split == "train" and not o.success] == []
    type_errors = {o.column: o.observed for o in result.errors if o.type == "expect_column_values_to_be_in_type_list"}
    assert set(type_errors) == {"score", "flag"}
    assert sorted(type_errors["score"]) == ["0.5", "1", "2", "3"] and type_errors["flag"] == "float64"


def test_the_label_is_checked_against_its_task():
    frame = pd.DataFrame({"x": np.arange(60.0), "species": ["a", "b", "c"] * 20, "wage": np.linspace(1, 9, 60)})
    multiclass = Task("multiclass", "species", ("a", "b", "c"))
    assert by_key(build_suite(ValidateConfig(), frame, multiclass))[
        "expect_column_values_to_be_in_set", "species"].kwargs["value_set"] == ["a", "b", "c"]
    unseen = frame.assign(species=["a", "b", "d"] * 20)
    result = validate({"train": frame, "test": unseen}, STRICT, multiclass)
    assert [(r.split, r.column) for r in result.errors if r.column == "species"] == [("test", "species")]
    regression = Task("regression", "wage")
    suite = by_key(build_suite(ValidateConfig(), frame.drop(columns="species"), regression))
    assert "float" in suite["expect_column_values_to_be_in_type_list", "wage"].kwargs["type_list"]
    assert ("expect_column_values_to_be_in_set", "wage") not in suite

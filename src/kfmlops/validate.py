"""Validate: check data splits against an expectation suite before anything trains on them.

Consumes data splits as pandas DataFrames (``{"train": df, "test": df}`` from the ingest stage's
Parquet files), the label's :class:`~kfmlops.tasks.Task` and a :class:`~kfmlops.config.ValidateConfig`; produces a
:class:`ValidationResult` (one :class:`ExpectationOutcome` per expectation and split, a JSON summary
and an HTML report) and, through :meth:`ValidationResult.raise_for_errors`, a
:class:`DataValidationError` naming every failed error-level expectation.

The suite is the declarative expectations of the config plus, when ``infer_from_train`` is set,
expectations inferred from a reference split (by default ``train``): each feature column's dtype
family, numeric range, category set and null rate, the label's values, and the columns present.
Expectations are Great Expectations 1.x expectations named in snake_case; one ephemeral GX context
runs the one suite against every split. GX is imported only when :func:`validate` runs, so
importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from kfmlops import report
from kfmlops.config import Expectation, ValidateConfig
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError

log = logging.getLogger(__name__)

RANGE_MOSTLY = 0.999
"""Share of a column's values that must lie in its inferred range (tolerates a few outliers)."""
MAX_INFERRED_CATEGORIES = 1000
"""String columns with more distinct values than this (identifiers, free text) get no inferred set."""
COLUMN_ARGUMENTS = ("column", "column_A", "column_B")

# Type names GX's expect_column_values_to_be_in_type_list accepts for pandas, per dtype family.
# Numeric includes floats for integer columns: pandas turns an integer column with nulls into float64.
_TYPE_LISTS = {
    "numeric": [
        "int", "float", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
        "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype", "Float32Dtype", "Float64Dtype",
    ],
    "boolean": ["bool", "BooleanDtype"],
    "string": ["str", "StringDtype"],
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


class DataValidationError(ValueError):
    """Data broke error-level expectations; the message names each: split, expectation, column, observed."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation checked against one split.

    ``unexpected_percent`` is a percentage (0-100) of the non-null values, for expectations about
    values; ``observed`` is the observed value (a dtype name, a column list) or a sample of the
    unexpected values, or ``{"exception": message}`` when GX could not evaluate it (a missing column).
    """

    split: str
    type: str
    column: str | None
    kwargs: dict[str, Any]
    severity: str
    success: bool
    unexpected_percent: float | None
    observed: Any

    def describe(self) -> str:
        where = f"column {self.column!r}" if self.column is not None else "the table"
        unexpected = "" if self.unexpected_percent is None else f", {self.unexpected_percent:.2f}% unexpected"
        return f"{self.split}: {self.type} on {where} ({self.severity}): observed {_short(self.observed)}{unexpected}"


@dataclass(frozen=True)
class ValidationResult:
    """Every expectation's outcome on every split; failed error-level ones fail the stage."""

    outcomes: list[ExpectationOutcome]

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "error"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary: the verdict, counts per split, and every outcome."""
        splits = dict.fromkeys(o.split for o in self.outcomes)
        return {
            "passed": self.passed,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "splits": {
                s: {
                    "evaluated": sum(o.split == s for o in self.outcomes),
                    "errors": sum(o.split == s for o in self.errors),
                    "warnings": sum(o.split == s for o in self.warnings),
                }
                for s in splits
            },
            "outcomes": [_json_safe(asdict(o)) for o in self.outcomes],
        }

    def to_html(self) -> str:
        """A self-contained HTML report: the verdict, the failures by severity, then every outcome."""

        def rows(outcomes: list[ExpectationOutcome]) -> list[dict[str, Any]]:
            return [
                {
                    "status": report.verdict(o.success, warning=o.severity == "warning"),
                    "split": o.split,
                    "expectation": o.type,
                    "column": o.column or "(table)",
                    "severity": o.severity,
                    "unexpected %": "" if o.unexpected_percent is None else o.unexpected_percent,
                    "observed": _short(o.observed),
                    "arguments": _short({k: v for k, v in o.kwargs.items() if k != "column"}),
                }
                for o in outcomes
            ]

        summary = (
            f"<p>{report.verdict(self.passed)} {len(self.outcomes)} checks, "
            f"{len(self.errors)} failed errors, {len(self.warnings)} failed warnings.</p>"
        )
        return report.page(
            "Data validation",
            [
                ("Verdict", summary),
                ("Failed errors", report.table(rows(self.errors), raw=["status"])),
                ("Failed warnings", report.table(rows(self.warnings), raw=["status"])),
                ("All expectations", report.table(rows(self.outcomes), raw=["status"])),
            ],
        )

    def raise_for_errors(self) -> None:
        """Raise :class:`DataValidationError` naming every failed error-level expectation, if any."""
        if self.passed:
            return
        lines = "\n".join(f"  - {o.describe()}" for o in self.errors)
        raise DataValidationError(f"data validation failed: {len(self.errors)} error-level expectations\n{lines}")


def expectation_columns(expectation: Expectation) -> list[str]:
    """The columns an expectation's arguments name (``column``, ``column_A``, ``column_B``, ``column_list``)."""
    kwargs = expectation.kwargs
    named = [kwargs[k] for k in COLUMN_ARGUMENTS if isinstance(kwargs.get(k), str)]
    return named + [c for c in kwargs.get("column_list") or [] if isinstance(c, str)]


def check_expectation_columns(expectations: list[Expectation], columns: list[str], where: str) -> None:
    """A ConfigError naming every declared expectation whose column ``where`` (e.g. "the train split") lacks."""
    present = set(columns)
    wrong = [
        f"validate.expectations[{i}] {e.type} names column {c!r}"
        for i, e in enumerate(expectations)
        for c in expectation_columns(e)
        if c not in present
    ]
    if wrong:
        raise ConfigError(
            f"{'; '.join(wrong)}, which {where} does not have; it has {sorted(present)} (expectations name columns "
            "by their normalised snake_case names)"
        )


def build_suite(config: ValidateConfig, reference: pd.DataFrame | None, task: Task) -> list[Expectation]:
    """The expectation suite: the config's declarative expectations, then those inferred from ``reference``.

    Inferred (at ``config.inferred_severity``) when ``config.infer_from_train``: the reference's
    columns must be present; for each feature column, values of its dtype family (numeric, boolean,
    string, datetime), numeric values within the observed range widened by ``range_margin`` of the
    span (``mostly`` :data:`RANGE_MOSTLY`), strings within the observed category set (``mostly``
    ``category_mostly``; skipped above :data:`MAX_INFERRED_CATEGORIES` values) and a null rate at
    most the observed rate plus ``null_rate_tolerance``; the label must be non-null and, for
    classification, one of the task's classes (regression: numeric).
    ``reference`` may be ``None`` only when nothing is inferred.
    """
    suite = list(config.expectations)
    if not config.infer_from_train:
        return suite
    if reference is None:
        raise ConfigError(
            "validate.infer_from_train needs a reference split to infer from: pass a 'train' split or a reference"
        )
    label = task.label
    if label not in reference.columns:
        raise ConfigError(f"label column {label!r} is not in the reference data; it has {list(reference.columns)}")

    def add(type_: str, **kwargs: Any) -> None:
        suite.append(Expectation(type=type_, kwargs=kwargs, severity=config.inferred_severity))

    add("expect_table_columns_to_match_set", column_set=[str(c) for c in reference.columns], exact_match=False)
    add("expect_column_values_to_not_be_null", column=label)
    if task.is_classification:
        add("expect_column_values_to_be_in_set", column=label, value_set=list(task.classes))
    else:
        add("expect_column_values_to_be_in_type_list", column=label, type_list=_TYPE_LISTS["numeric"])
    for column in reference.columns:
        if column == label:
            continue
        values = reference[column]
        family = _dtype_family(values)
        if family is not None:
            add("expect_column_values_to_be_in_type_list", column=column, type_list=_TYPE_LISTS[family])
        if family == "numeric" and values.notna().any():
            low, high = float(values.min()), float(values.max())
            margin = (high - low) * config.range_margin
            add("expect_column_values_to_be_between", column=column,
                min_value=low - margin, max_value=high + margin, mostly=RANGE_MOSTLY)
        if family == "string":
            categories = values.dropna().unique()
            if 0 < len(categories) <= MAX_INFERRED_CATEGORIES:
                add("expect_column_values_to_be_in_set", column=column,
                    value_set=sorted(str(v) for v in categories), mostly=config.category_mostly)
        mostly = min(1.0, max(0.0, 1.0 - (float(values.isna().mean()) + config.null_rate_tolerance)))
        if mostly > 0.0:
            add("expect_column_values_to_not_be_null", column=column, mostly=mostly)
    return suite


def validate(
    splits: dict[str, pd.DataFrame],
    config: ValidateConfig,
    task: Task,
    reference: pd.DataFrame | None = None,
) -> ValidationResult:
    """Run the suite (built once, from ``reference`` or else ``splits["train"]``) against every split.

    Raises :class:`~kfmlops.config.ConfigError` for an unknown expectation name, invalid arguments
    or a declared expectation naming a column the reference lacks, before any data is checked.
    Failed expectations do not raise here: call :meth:`ValidationResult.raise_for_errors` to fail
    on error-level ones.
    """
    reference = reference if reference is not None else splits.get("train")
    if reference is not None:
        check_expectation_columns(config.expectations, list(reference.columns), "the reference (train) split")
    suite = build_suite(config, reference, task)
    classes = [_expectation_class(e.type, f"validate.expectations[{i}]") for i, e in enumerate(suite)]
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    started = time.monotonic()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    gx_expectations = []
    for i, (expectation, cls) in enumerate(zip(suite, classes)):
        try:
            gx_expectations.append(cls(**expectation.kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"validate.expectations[{i}] {expectation.type}: invalid arguments: {exc}") from None
    gx_suite = context.suites.add(gx.ExpectationSuite(name="kfmlops", expectations=gx_expectations))
    by_id = {gx_expectation.id: expectation for gx_expectation, expectation in zip(gx_suite.expectations, suite)}
    batch = context.data_sources.add_pandas("kfmlops").add_dataframe_asset("split").add_batch_definition_whole_dataframe("whole")
    definition = gx.ValidationDefinition(name="kfmlops", data=batch, suite=gx_suite)

    outcomes: list[ExpectationOutcome] = []
    for split, frame in splits.items():
        run = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        # Results come back in GX's order, not the suite's: match them on the id GX assigned.
        by_result = {r.expectation_config.id: r for r in run.results}
        outcomes += [_outcome(split, frame, expectation, by_result[id_]) for id_, expectation in by_id.items()]
    result = ValidationResult(outcomes)
    log.info(
        "validate: %d expectations x %d splits, %d errors, %d warnings failed, %.2f s",
        len(suite), len(splits), len(result.errors), len(result.warnings), time.monotonic() - started,
    )
    return result


def _import_gx() -> Any:
    """Great Expectations, imported on first use (about 5 s), with its usage analytics off."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


@cache
def _expectation_classes() -> dict[str, type]:
    gx = _import_gx()
    found = (getattr(gx.expectations, name) for name in dir(gx.expectations))
    return {
        cls.expectation_type: cls
        for cls in found
        if isinstance(cls, type) and issubclass(cls, gx.expectations.Expectation) and getattr(cls, "expectation_type", None)
    }


def _expectation_class(name: str, where: str) -> type:
    """The GX expectation class for a snake_case name: ``expect_column_to_exist`` -> ``ExpectColumnToExist``."""
    classes = _expectation_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, classes, n=3, cutoff=0.85)
        hint = f"did you mean {' or '.join(close)}?" if close else "see https://greatexpectations.io/expectations"
        raise ConfigError(
            f"{where}: unknown expectation type {name!r}; use the snake_case name of a "
            f"Great Expectations 1.x core expectation ({hint})"
        )
    return classes[name]


def _dtype_family(values: pd.Series) -> str | None:
    """numeric, boolean, string or datetime; ``None`` (no type expectation) for anything else."""
    if pd.api.types.is_bool_dtype(values):
        return "boolean"
    if pd.api.types.is_numeric_dtype(values):
        return "numeric"
    if pd.api.types.is_datetime64_dtype(values):
        return "datetime"
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return "string"
    return None


def _outcome(split: str, frame: pd.DataFrame, expectation: Expectation, gx_result: Any) -> ExpectationOutcome:
    details = gx_result.result or {}
    column = expectation.kwargs.get("column")
    exception = _exception_message(gx_result.exception_info or {})
    if exception is not None:
        # GX's message for a column a split lacks can be an internal one ("list index out of range").
        missing = column is not None and column not in frame.columns
        observed: Any = {"exception": f"column {column!r} does not exist" if missing else exception}
    elif "observed_value" in details:
        observed = details["observed_value"]
        if "details" in details:
            observed = {**details["details"], "value": observed}
    else:
        sample = [_json_safe(c["value"]) for c in details.get("partial_unexpected_counts", [])]
        observed = list({json.dumps(v, sort_keys=True): v for v in sample}.values())
    return ExpectationOutcome(
        split=split,
        type=expectation.type,
        column=column,
        kwargs=dict(expectation.kwargs),
        severity=expectation.severity,
        success=bool(gx_result.success),
        unexpected_percent=_json_safe(details.get("unexpected_percent")),
        observed=_json_safe(observed),
    )


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports an exception either at the top level or per metric that failed to resolve."""
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    messages = [v["exception_message"] for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/inf to None, sets sorted, anything else as text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_json_safe(v) for v in value), key=str)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(_json_safe(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."

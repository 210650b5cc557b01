"""Fairness gate: slice a candidate's test predictions by each sensitive feature and check group disparities.

Consumes the data's :class:`~kfmlops.tasks.Task`, the predictions dataset of the test split (with
labels; columns in :mod:`kfmlops.tasks`), the sensitive columns of the same rows and a
:class:`~kfmlops.config.FairnessConfig`; produces a :class:`FairnessResult` (figures by group, every
disparity figure, each check's verdict) as JSON and as an HTML page.

What a group's figures are, and which disparities are computed over the groups, is the task's
(:func:`group_columns` and :data:`DISPARITIES` in :mod:`kfmlops.tasks.binary` ...): binary
selection rate, TPR, FPR and accuracy, gated on demographic parity difference and ratio and
equalized odds difference; multiclass accuracy and each class's selection rate, gated on the
accuracy difference; regression MAE, mean prediction and mean label, gated on the MAE ratio and the
mean prediction difference. A group's figure is the mean of its rows' values (rows where a value is
undefined, a TPR on a negative row, are skipped: a group with no positive rows has no TPR, NaN).

Groups with fewer than ``min_group_size`` rows are reported but excluded ("not gated"); a disparity
over fewer than two gated groups with a value is NaN. Each figure is compared with its threshold
(``None`` = reported, not checked; ``max_*`` fails above, ``min_*`` below). A threshold set for
another task is a configuration error (:class:`FairnessConfigError`, raised before anything is
computed). The gate fails closed: a threshold that is set but checks nothing (no sensitive features,
or a figure that cannot be computed) fails it, saying why. Null sensitive values form their own
group, ``"(missing)"``.
"""

from __future__ import annotations

import html
import importlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfmlops import report
from kfmlops.config import FairnessConfig
from kfmlops.tasks import Task, metrics_module

MISSING_GROUP = "(missing)"
_EPS = 1e-12
_KINDS = ("binary", "multiclass", "regression")


class FairnessConfigError(ValueError):
    """A fairness threshold does not fit the task; the message names it and the task's own thresholds."""


def _json_float(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _thresholds(kind: str) -> list[str]:
    """The FairnessConfig thresholds that gate a task of ``kind``."""
    module = importlib.import_module(f"kfmlops.tasks.{kind}")
    return [threshold for _, _, threshold in module.DISPARITIES.values()]


def check_config(task: Task, config: FairnessConfig) -> None:
    """A :class:`FairnessConfigError` when a threshold is set that gates another task than ``task``'s."""
    own = _thresholds(task.kind)
    foreign = {name: kind for kind in _KINDS if kind != task.kind for name in _thresholds(kind)
               if getattr(config, name) is not None and name not in own}
    if foreign:
        listed = ", ".join(f"fairness.{name} (a {kind} threshold)" for name, kind in sorted(foreign.items()))
        raise FairnessConfigError(f"{listed} set, but this is a {task.kind} task, whose thresholds are "
                                  f"{', '.join(own)}: unset it or set the {task.kind} ones")


@dataclass(frozen=True)
class FeatureFairness:
    """One sensitive feature: rows by group and the task's disparity figures over the gated groups.

    ``by_group`` rows: ``group``, ``count``, the task's figures (see the module docstring), ``gated``
    (``count >= min_group_size``), largest group first. ``figures``: NaN where a figure cannot be
    computed. ``checks``: each figure against its threshold (see :func:`assess`).
    """

    feature: str
    by_group: list[dict]
    figures: dict[str, float]
    checks: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: NaN and infinity become ``None``."""
        return {
            "feature": self.feature,
            "by_group": [{k: _json_float(v) for k, v in row.items()} for row in self.by_group],
            **{name: _json_float(value) for name, value in self.figures.items()},
            "checks": [{k: _json_float(v) for k, v in check.items()} for check in self.checks],
        }


@dataclass(frozen=True)
class FairnessResult:
    """The fairness gate's decision; ``reasons`` name the feature and the figures of every failed check
    (plus any figure that could not be computed); when passed, the first line says why."""

    passed: bool
    reasons: list[str]
    features: list[FeatureFairness]
    task: str
    config: FairnessConfig = field(default_factory=FairnessConfig)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "task": self.task,
            "thresholds": self.config.model_dump(mode="json"),
            "features": [f.to_json() for f in self.features],
        }

    def figures(self) -> dict[str, float]:
        """Every disparity figure that is finite, as ``{"feature.figure": value}`` (metric stores refuse
        NaN: one left out is explained in ``reasons`` when it was gated)."""
        return {f"{f.feature}.{name}": float(value) for f in self.features for name, value in f.figures.items()
                if math.isfinite(value)}

    def to_html(self) -> str:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        c = self.config
        own = _thresholds(self.task)
        limits = [{"setting": name, "value": "not checked" if getattr(c, name) is None else getattr(c, name)}
                  for name in [*own, "min_group_size"]]
        sections = [
            ("Verdict", f"<p>{report.verdict(self.passed)} ({html.escape(self.task)} task)</p><ul>{reasons}</ul>"),
            ("Thresholds", report.table(limits)),
        ]
        for f in self.features:
            groups = [
                {**row, "gated": "yes" if row["gated"] else f"no (< {c.min_group_size} rows)"} for row in f.by_group
            ]
            figures = []
            for check in f.checks:
                status = check["status"]
                badge = report.verdict(status == "pass") if status in ("pass", "fail") else html.escape(status)
                op = "<=" if check["kind"] == "max" else ">="
                figures.append({
                    "figure": check["figure"],
                    "value": check["value"] if math.isfinite(check["value"]) else str(check["value"]),
                    "threshold": "—" if check["threshold"] is None else f"{op} {check['threshold']}",
                    "result": badge,
                })
            sections.append((f"{f.feature}: by group", report.table(groups)))
            sections.append((f"{f.feature}: disparities over gated groups", report.table(figures, raw=["result"])))
        return report.page("Fairness", sections)


def _groups(column: pd.Series) -> np.ndarray:
    return column.astype("string").fillna(MISSING_GROUP).to_numpy(dtype=object)


def _by_group(columns: dict[str, np.ndarray], groups: np.ndarray, min_group_size: int) -> list[dict]:
    frame = pd.DataFrame(columns).assign(_group=groups).groupby("_group", sort=False)
    counts, means = frame.size(), frame.mean()  # mean skips NaN: a rate over the rows it is defined on
    rows = [{"group": str(group), "count": int(counts[group]), **{k: float(v) for k, v in means.loc[group].items()},
             "gated": int(counts[group]) >= min_group_size} for group in counts.index]
    return sorted(rows, key=lambda row: (-row["count"], row["group"]))


def _values(rows: list[dict], column: str) -> list[tuple[float, str]]:
    """(value, group) of the gated groups where ``column`` is defined."""
    return [(r[column], r["group"]) for r in rows if r["gated"] and not math.isnan(r[column])]


def _statistic(statistic: str, rows: list[dict], columns: tuple[str, ...]) -> float:
    """``difference``: the largest max-minus-min over ``columns``; ``min_over_max`` (1.0 when all are 0) and
    ``max_over_min`` (1.0 when all are 0, inf when only the smallest is) of the one column; NaN with fewer
    than two gated groups to compare."""
    spreads = []
    for column in columns:
        values = [v for v, _ in _values(rows, column)]
        if len(values) < 2:
            continue
        low, high = min(values), max(values)
        if statistic == "difference":
            spreads.append(high - low)
        elif statistic == "min_over_max":
            spreads.append(1.0 if high == 0 else low / high)
        else:
            spreads.append(1.0 if high == 0 else (math.inf if low == 0 else high / low))
    return max(spreads) if spreads else math.nan


def _extremes(rows: list[dict], columns: tuple[str, ...]) -> str:
    """The groups at either end of the column (of ``columns``) that spreads most, e.g. ``tpr Male 0.6 vs Female 0.4``."""
    best = ""
    widest = -math.inf
    for column in columns:
        values = _values(rows, column)
        if len(values) < 2:
            continue
        (low, low_group), (high, high_group) = min(values), max(values)
        if high - low > widest:
            widest = high - low
            best = f"{column} {high_group} {high:.4f} vs {low_group} {low:.4f}"
    return best


def _feature(name: str, task: Task, columns: dict[str, np.ndarray], sensitive: pd.Series,
             config: FairnessConfig) -> tuple[FeatureFairness, list[str], list[str], list[str]]:
    """One feature's figures and checks, with its (failed, passed, unchecked) reasons."""
    rows = _by_group(columns, _groups(sensitive), config.min_group_size)
    gated = sum(r["gated"] for r in rows)
    figures, checks, failed, passed, unchecked = {}, [], [], [], []
    for figure, (statistic, used, threshold_name) in metrics_module(task).DISPARITIES.items():
        value = _statistic(statistic, rows, used)
        figures[figure] = value
        limit = getattr(config, threshold_name)
        kind = "min" if threshold_name.startswith("min_") else "max"
        if limit is None:
            status = "not set"
        elif math.isnan(value):
            status = "not computed"
            why = (f"only {gated} of its {len(rows)} groups have >= {config.min_group_size} test rows "
                   "(fairness.min_group_size) and the figure compares two; lower fairness.min_group_size or test on "
                   "more rows" if gated < 2 else f"no two gated groups have a value of {' or '.join(used)} to compare")
            unchecked.append(f"not checked, so failed: {name}: {figure} ({threshold_name} {limit:.4g}) cannot be "
                             f"computed: {why}")
        else:
            bad = value > limit + _EPS if kind == "max" else value < limit - _EPS
            status = "fail" if bad else "pass"
            if bad:
                detail = _extremes(rows, used)
                op = ">" if kind == "max" else "<"
                failed.append(f"{name}: {figure} {value:.4f} {op} {threshold_name} {limit:.4g}"
                              + (f" ({detail})" if detail else ""))
            else:
                passed.append(f"{name} {figure} {value:.4f} {'<=' if kind == 'max' else '>='} {limit:.4g}")
        checks.append({"figure": figure, "value": value, "threshold_name": threshold_name, "threshold": limit,
                       "kind": kind, "status": status})
    return FeatureFairness(name, rows, figures, checks), failed, passed, unchecked


def assess(task: Task, predictions: pd.DataFrame, sensitive: pd.DataFrame | None, config: FairnessConfig) -> FairnessResult:
    """Check the group disparities of ``predictions`` (a predictions dataset with labels) for every column
    of ``sensitive`` (rows aligned by position); see the module docstring."""
    check_config(task, config)
    own = [name for name in _thresholds(task.kind) if getattr(config, name) is not None]
    if sensitive is None or sensitive.shape[1] == 0:
        if own:
            reason = (f"fairness thresholds {own} are set but no sensitive features were given, so nothing could be "
                      "checked: list the columns to slice by in data.sensitive_features")
            return FairnessResult(False, [reason], [], task.kind, config)
        return FairnessResult(True, ["no sensitive features configured: nothing was checked"], [], task.kind, config)
    if len(sensitive) != len(predictions):
        raise ValueError(f"length mismatch: {len(predictions)} predictions but {len(sensitive)} sensitive-feature rows")
    if sensitive.columns.duplicated().any():
        raise ValueError(f"duplicate sensitive columns: {list(sensitive.columns[sensitive.columns.duplicated()])}")
    columns = metrics_module(task).group_columns(task, predictions)
    features, failed, passed, unchecked = [], [], [], []
    for name in sensitive.columns:
        feature, f_failed, f_passed, f_unchecked = _feature(str(name), task, columns, sensitive[name], config)
        features.append(feature)
        failed += f_failed
        passed += f_passed
        unchecked += f_unchecked
    names = ", ".join(f.feature for f in features)
    if failed or unchecked:
        reasons = failed + unchecked
    elif passed:
        reasons = [f"passed over {names} (groups with >= {config.min_group_size} rows): " + "; ".join(passed)]
    else:
        reasons = [f"no fairness thresholds set: figures for {names} reported, nothing was checked"]
    return FairnessResult(not (failed or unchecked), reasons, features, task.kind, config)

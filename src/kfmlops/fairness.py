"""Fairness gate: slice test-set predictions by each sensitive feature and check group disparities.

For every sensitive column, fairlearn's ``MetricFrame`` gives per-group count, selection rate, true
and false positive rates and accuracy. Groups with fewer than ``min_group_size`` rows are reported
but excluded ("not gated"); over the gated groups the module computes

* demographic parity difference: largest minus smallest selection rate,
* demographic parity ratio: smallest over largest selection rate (1.0 when all are 0),
* equalized odds difference: the larger of the TPR difference and the FPR difference (fairlearn's
  ``worst_case`` definition),

and compares each with its threshold in :class:`~kfmlops.config.FairnessConfig` (``None`` = not
checked). A group with no positive (negative) rows has no defined TPR (FPR): NaN, skipped by the
differences. With fewer than two gated groups to compare a figure is NaN. The gate fails closed: a
threshold that is set but checks nothing (no sensitive features, or a figure that cannot be computed
because too few groups reach ``min_group_size``) fails it, saying why. Null sensitive values form
their own group, ``"(missing)"``.

fairlearn is imported inside :func:`assess`, so importing this module is cheap.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfmlops import report
from kfmlops.config import FairnessConfig

MISSING_GROUP = "(missing)"
_EPS = 1e-12
# (figure, threshold field, kind): "max" fails above the threshold, "min" below it.
_CHECKS = (
    ("demographic_parity_difference", "max_demographic_parity_difference", "max"),
    ("demographic_parity_ratio", "min_demographic_parity_ratio", "min"),
    ("equalized_odds_difference", "max_equalized_odds_difference", "max"),
)


def _json_float(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass(frozen=True)
class FeatureFairness:
    """One sensitive feature: rows by group and the three disparity figures over gated groups.

    ``by_group`` rows: ``group``, ``count``, ``selection_rate``, ``tpr``, ``fpr``, ``accuracy``,
    ``gated`` (``count >= min_group_size``). Figures are NaN where they cannot be computed.
    """

    feature: str
    by_group: list[dict]
    demographic_parity_difference: float
    demographic_parity_ratio: float
    equalized_odds_difference: float

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes ``None``."""
        return {
            "feature": self.feature,
            "by_group": [{k: _json_float(v) for k, v in row.items()} for row in self.by_group],
            **{name: _json_float(getattr(self, name)) for name, _, _ in _CHECKS},
        }

    def checks(self, config: FairnessConfig) -> list[dict[str, Any]]:
        """Each figure against its threshold: ``figure, value, threshold_name, threshold, status``
        where status is ``"pass"``, ``"fail"``, ``"not set"`` (threshold None) or ``"not computed"`` (NaN)."""
        out = []
        for name, limit_name, kind in _CHECKS:
            value = float(getattr(self, name))
            limit = getattr(config, limit_name)
            if limit is None:
                status = "not set"
            elif math.isnan(value):
                status = "not computed"
            elif kind == "max":
                status = "fail" if value > limit + _EPS else "pass"
            else:
                status = "fail" if value < limit - _EPS else "pass"
            out.append({"figure": name, "value": value, "threshold_name": limit_name, "threshold": limit,
                        "kind": kind, "status": status})
        return out

    def _extremes(self, column: str) -> str:
        rows = [r for r in self.by_group if r["gated"] and not math.isnan(r[column])]
        if len(rows) < 2:
            return ""
        lo = min(rows, key=lambda r: r[column])
        hi = max(rows, key=lambda r: r[column])
        return f"{column} {hi['group']} {hi[column]:.4f} vs {lo['group']} {lo[column]:.4f}"

    def _explain(self, figure: str) -> str:
        if figure != "equalized_odds_difference":
            return self._extremes("selection_rate")
        tpr, fpr = _spread(_gated(self.by_group, "tpr")), _spread(_gated(self.by_group, "fpr"))
        return self._extremes("tpr" if not math.isnan(tpr) and (math.isnan(fpr) or tpr >= fpr) else "fpr")


@dataclass(frozen=True)
class FairnessResult:
    """The fairness gate's decision; ``reasons`` name the feature and the figures of every failed check
    (plus any figure that could not be computed); when passed, the first line says why."""

    passed: bool
    reasons: list[str]
    features: list[FeatureFairness]
    config: FairnessConfig = field(default_factory=FairnessConfig)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "thresholds": self.config.model_dump(mode="json"),
            "features": [f.to_json() for f in self.features],
        }

    def figures(self) -> dict[str, float]:
        """Every disparity figure that could be computed, as ``{"feature.figure": value}`` (metric
        stores refuse NaN: a figure that is NaN is left out; ``reasons`` say why)."""
        return {
            f"{f.feature}.{name}": float(getattr(f, name))
            for f in self.features
            for name, _, _ in _CHECKS
            if not math.isnan(getattr(f, name))
        }

    def to_html(self) -> str:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        c = self.config
        limits = [{"setting": k, "value": "not checked" if v is None else v} for k, v in c.model_dump().items()]
        sections = [
            ("Verdict", f"<p>{report.verdict(self.passed)}</p><ul>{reasons}</ul>"),
            ("Thresholds", report.table(limits)),
        ]
        for f in self.features:
            groups = [
                {**row, "gated": "yes" if row["gated"] else f"no (< {c.min_group_size} rows)"} for row in f.by_group
            ]
            figures = []
            for check in f.checks(c):
                status = check["status"]
                badge = report.verdict(status == "pass") if status in ("pass", "fail") else html.escape(status)
                op = "<=" if check["kind"] == "max" else ">="
                figures.append({
                    "figure": check["figure"],
                    "value": check["value"] if not math.isnan(check["value"]) else "n/a",
                    "threshold": "—" if check["threshold"] is None else f"{op} {check['threshold']}",
                    "result": badge,
                })
            sections.append((f"{f.feature}: by group", report.table(groups)))
            sections.append((f"{f.feature}: disparities over gated groups", report.table(figures, raw=["result"])))
        return report.page("Fairness", sections)


def _binary(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    try:
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 0/1, got values such as {arr[:3].tolist()}") from None
    if np.isnan(as_float).any() or not np.isin(as_float, (0.0, 1.0)).all():
        bad = sorted({v for v in arr.tolist() if v not in (0, 1)}, key=str)[:5]
        raise ValueError(f"{what} must be 0/1; found {bad}")
    return as_float.astype(np.int64)


def _groups(column: pd.Series) -> np.ndarray:
    return column.astype("string").fillna(MISSING_GROUP).to_numpy(dtype=object)


def _gated(rows: list[dict], column: str) -> np.ndarray:
    return np.array([r[column] for r in rows if r["gated"]], dtype=np.float64)


def _spread(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.max() - values.min()) if len(values) >= 2 else math.nan


def _ratio(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan
    top = values.max()
    return 1.0 if top == 0 else float(values.min() / top)


def _positives(y_true, y_pred) -> int:
    return int(np.sum(y_true))


def _feature(name: str, y: np.ndarray, pred: np.ndarray, column: pd.Series, min_group_size: int) -> FeatureFairness:
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-class groups: handled below, not worth a warning per group
        frame = MetricFrame(
            metrics={
                "count": count,
                "positives": _positives,
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
                "accuracy": accuracy_score,
            },
            y_true=y,
            y_pred=pred,
            sensitive_features=pd.Series(_groups(column), name=name),
        )
    rows = []
    for group, r in frame.by_group.iterrows():
        n, positives = int(r["count"]), int(r["positives"])
        rows.append({
            "group": str(group),
            "count": n,
            "selection_rate": float(r["selection_rate"]),
            # fairlearn reports 0 for a rate whose denominator is 0; it is undefined.
            "tpr": float(r["tpr"]) if positives > 0 else math.nan,
            "fpr": float(r["fpr"]) if n - positives > 0 else math.nan,
            "accuracy": float(r["accuracy"]),
            "gated": n >= min_group_size,
        })
    rows.sort(key=lambda row: (-row["count"], row["group"]))
    selection = _gated(rows, "selection_rate")
    tpr_diff, fpr_diff = _spread(_gated(rows, "tpr")), _spread(_gated(rows, "fpr"))
    eo = math.nan if math.isnan(tpr_diff) and math.isnan(fpr_diff) else float(np.nanmax([tpr_diff, fpr_diff]))
    return FeatureFairness(
        feature=name,
        by_group=rows,
        demographic_parity_difference=_spread(selection),
        demographic_parity_ratio=_ratio(selection),
        equalized_odds_difference=eo,
    )


def assess(y_true: np.ndarray, y_pred: np.ndarray, sensitive: pd.DataFrame | None, config: FairnessConfig) -> FairnessResult:
    """Check group disparities of 0/1 predictions for every column of ``sensitive`` (rows aligned by position)."""
    y = _binary(y_true, "y_true")
    pred = _binary(y_pred, "y_pred")
    if len(y) != len(pred):
        raise ValueError(f"length mismatch: {len(y)} labels but {len(pred)} predictions")
    if sensitive is None or sensitive.shape[1] == 0:
        thresholds = [name for _, name, _ in _CHECKS if getattr(config, name) is not None]
        if thresholds:
            reason = (f"fairness thresholds {thresholds} are set but no sensitive features were given, so nothing "
                      "could be checked: list the columns to slice by in data.sensitive_features")
            return FairnessResult(passed=False, reasons=[reason], features=[], config=config)
        return FairnessResult(
            passed=True, reasons=["no sensitive features configured: nothing was checked"], features=[], config=config
        )
    if len(sensitive) != len(y):
        raise ValueError(f"length mismatch: {len(y)} labels but {len(sensitive)} sensitive-feature rows")
    if len(y) == 0:
        raise ValueError("cannot assess fairness on an empty test set")
    if sensitive.columns.duplicated().any():
        raise ValueError(f"duplicate sensitive columns: {list(sensitive.columns[sensitive.columns.duplicated()])}")

    features = [
        _feature(str(name), y, pred, sensitive[name], config.min_group_size) for name in sensitive.columns
    ]
    failed, passed, unchecked = [], [], []
    for f in features:
        gated = sum(r["gated"] for r in f.by_group)
        for check in f.checks(config):
            figure, value, limit_name, limit = check["figure"], check["value"], check["threshold_name"], check["threshold"]
            if check["status"] == "fail":
                op = ">" if check["kind"] == "max" else "<"
                detail = f._explain(figure)
                failed.append(
                    f"{f.feature}: {figure} {value:.4f} {op} {limit_name} {limit:.4g}" + (f" ({detail})" if detail else "")
                )
            elif check["status"] == "pass":
                op = "<=" if check["kind"] == "max" else ">="
                passed.append(f"{f.feature} {figure} {value:.4f} {op} {limit:.4g}")
            elif check["status"] == "not computed":
                why = (
                    f"only {gated} of its {len(f.by_group)} groups have >= {config.min_group_size} test rows "
                    "(fairness.min_group_size) and the figure compares two; lower fairness.min_group_size or test "
                    "on more rows" if gated < 2 else
                    "no two gated groups have both positive and negative rows to compare rates over"
                )
                unchecked.append(f"not checked, so failed: {f.feature}: {figure} ({limit_name} {limit:.4g}) cannot be "
                                 f"computed: {why}")
    names = ", ".join(f.feature for f in features)
    if failed or unchecked:
        reasons = failed + unchecked
    elif passed:
        reasons = [f"passed over {names} (groups with >= {config.min_group_size} rows): " + "; ".join(passed)]
    else:
        reasons = [f"no fairness thresholds set: figures for {names} reported, nothing was checked"]
    return FairnessResult(passed=not (failed or unchecked), reasons=reasons, features=features, config=config)

"""Binary: metrics, the primary metric, the trivial baseline and the fairness figures by group.

Consumes a :class:`~kfmlops.tasks.Task` (``classes == (negative, positive)``) and a predictions dataset
(columns ``label``, ``prediction``, ``proba:<class>``; see :mod:`kfmlops.tasks`); produces plain numbers.
No I/O. The hard metrics read ``prediction`` (already cut at the decision threshold by
:func:`kfmlops.model_contract.predictions`), the others ``proba:<positive>``.

- :func:`metrics`: ``roc_auc``, ``pr_auc`` (average precision, the step-wise area under the
  precision-recall curve), ``accuracy``, ``f1``, ``precision``, ``recall`` (of the positive class),
  ``log_loss``, ``brier``. The labels must hold both classes.
- :func:`details`: rows ``n``, the confusion matrix ``[[tn, fp], [fn, tp]]`` and a ROC curve
  (``fpr``, ``tpr``, ``thresholds``: at most :data:`MAX_CURVE_POINTS` points, all finite).
- :func:`baseline`: the prior (the train labels' class shares) for every row: ROC AUC 0.5.
- :func:`group_columns`: per-row values whose mean over a group is that group's figure:
  ``selection_rate`` (predicted positive), ``tpr`` and ``fpr`` (predicted positive among the positive /
  negative rows; NaN on the other rows, so a group without positives has no TPR), ``accuracy``;
  :data:`DISPARITIES`: demographic parity difference (largest minus smallest selection rate), ratio
  (smallest over largest; 1.0 when all are 0) and equalized odds difference (the larger of the TPR
  and the FPR differences, fairlearn's ``worst_case``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.tasks import Task
from kfmlops.tasks.multiclass import baseline, confusion_matrix, finite, predicted_codes, probabilities, true_codes

PRIMARY = "roc_auc"
DIRECTIONS = {"roc_auc": "max", "pr_auc": "max", "accuracy": "max", "f1": "max", "precision": "max", "recall": "max",
              "log_loss": "min", "brier": "min"}
"""Each metric's direction: ``max`` (higher is better) or ``min``."""
IDEAL = {"roc_auc": 1.0, "pr_auc": 1.0, "accuracy": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0,
         "log_loss": 0.0, "brier": 0.0}
"""Each metric's value for a perfect model."""
DISPARITIES = {
    "demographic_parity_difference": ("difference", ("selection_rate",), "max_demographic_parity_difference"),
    "demographic_parity_ratio": ("min_over_max", ("selection_rate",), "min_demographic_parity_ratio"),
    "equalized_odds_difference": ("difference", ("tpr", "fpr"), "max_equalized_odds_difference"),
}
"""figure -> (statistic over the gated groups, the :func:`group_columns` it reads, its FairnessConfig threshold)."""
MAX_CURVE_POINTS = 200

__all__ = ["DIRECTIONS", "DISPARITIES", "IDEAL", "MAX_CURVE_POINTS", "PRIMARY", "baseline", "details",
           "group_columns", "metrics", "roc_curve"]


def _positive(task: Task, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (0/1), predictions (0/1) and P(positive); a ValueError when the labels hold one class only."""
    y = true_codes(task, frame)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the labels hold one class only ({task.classes[int(y[0])]!r}, {len(y)} rows): ROC AUC and PR "
                         "AUC need both classes")
    return y, predicted_codes(task, frame), probabilities(task, frame)[:, 1]


def metrics(task: Task, frame: pd.DataFrame, names: Collection[str] | None = None) -> dict[str, float]:
    """The scalar metrics of the predictions dataset ``frame`` (see the module docstring); only
    ``names`` of them when given."""
    from sklearn import metrics as skm

    y, pred, p = _positive(task, frame)
    compute = {
        "roc_auc": lambda: skm.roc_auc_score(y, p),
        "pr_auc": lambda: skm.average_precision_score(y, p),
        "accuracy": lambda: skm.accuracy_score(y, pred),
        "f1": lambda: skm.f1_score(y, pred, zero_division=0.0),
        "precision": lambda: skm.precision_score(y, pred, zero_division=0.0),
        "recall": lambda: skm.recall_score(y, pred, zero_division=0.0),
        "log_loss": lambda: skm.log_loss(y, p, labels=[0, 1]),
        "brier": lambda: skm.brier_score_loss(y, p),
    }
    return finite({name: f() for name, f in compute.items() if names is None or name in names})


def roc_curve(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """sklearn's ROC curve with finite thresholds, downsampled to at most :data:`MAX_CURVE_POINTS` points."""
    from sklearn import metrics as skm

    fpr, tpr, thresholds = (np.asarray(a, dtype=np.float64) for a in skm.roc_curve(y, p, drop_intermediate=True))
    # sklearn's first point (fpr=tpr=0) has threshold +inf ("predict nothing positive"). A threshold
    # of 1.0 means the same when no probability reaches 1.0; otherwise the point is dropped.
    if len(thresholds) > 1 and not np.isfinite(thresholds[0]) and thresholds[1] < 1.0:
        thresholds[0] = 1.0
    keep = np.isfinite(thresholds) & np.isfinite(fpr) & np.isfinite(tpr)
    fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    if len(thresholds) > MAX_CURVE_POINTS:
        idx = np.unique(np.round(np.linspace(0, len(thresholds) - 1, MAX_CURVE_POINTS)).astype(np.int64))
        fpr, tpr, thresholds = fpr[idx], tpr[idx], thresholds[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def details(task: Task, frame: pd.DataFrame) -> dict[str, Any]:
    """``n``, the confusion matrix ``[[tn, fp], [fn, tp]]`` and the ROC curve (JSON-safe)."""
    y, _, p = _positive(task, frame)
    return {"n": int(len(frame)), "confusion_matrix": confusion_matrix(task, frame), "roc_curve": roc_curve(y, p)}


def group_columns(task: Task, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row ``selection_rate``, ``tpr``, ``fpr`` (NaN off their rows) and ``accuracy``."""
    y, pred = true_codes(task, frame) == 1, predicted_codes(task, frame) == 1
    chosen = pred.astype(np.float64)
    return {
        "selection_rate": chosen,
        "tpr": np.where(y, chosen, np.nan),
        "fpr": np.where(~y, chosen, np.nan),
        "accuracy": (y == pred).astype(np.float64),
    }

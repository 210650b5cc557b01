"""Regression: metrics, the primary metric, the trivial baseline and the fairness figures by group.

Consumes a :class:`~kfmlops.tasks.Task` and a predictions dataset (columns ``label`` and
``prediction``, both float; see :mod:`kfmlops.tasks`); produces plain numbers. No I/O.

- :func:`metrics`: ``rmse``, ``mae``, ``r2`` (scikit-learn's: 1.0 for a perfect fit of constant
  labels, 0.0 for an imperfect one) and ``mape``, the mean of ``|label - prediction| / |label|`` as a
  fraction (0.1 is 10%) over the rows whose label is not 0 (those rows have no percentage error;
  ``mape_rows`` in :func:`details` counts the rows it covers; left out when every label is 0).
- :func:`details`: rows ``n``, ``mape_rows``.
- :func:`baseline`: the mean of the train labels, for every row.
- :func:`group_columns`: per-row values whose mean over a group is that group's figure: ``mae``
  (absolute error), ``mean_prediction``, ``mean_label``; :data:`DISPARITIES`: ``mae_ratio`` (the
  largest group MAE over the smallest; 1.0 when both are 0, infinite when only the smallest is) and
  ``mean_prediction_difference`` (largest minus smallest mean prediction, in label units).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.tasks import LABEL, PREDICTION, Task
from kfmlops.tasks.multiclass import finite

PRIMARY = "rmse"
DIRECTIONS = {"rmse": "min", "mae": "min", "r2": "max", "mape": "min"}
"""Each metric's direction: ``max`` (higher is better) or ``min``."""
IDEAL = {"rmse": 0.0, "mae": 0.0, "r2": 1.0, "mape": 0.0}
"""Each metric's value for a perfect model."""
DISPARITIES = {
    "mae_ratio": ("max_over_min", ("mae",), "max_mae_ratio"),
    "mean_prediction_difference": ("difference", ("mean_prediction",), "max_mean_prediction_difference"),
}
"""figure -> (statistic over the gated groups, the :func:`group_columns` it reads, its FairnessConfig threshold)."""


def _values(task: Task, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted values; a ValueError when the predictions dataset has no labels or no rows."""
    if LABEL not in frame.columns:
        raise ValueError(f"the predictions dataset has no {LABEL!r} column: score a split that holds the label "
                         f"{task.label!r}")
    if len(frame) == 0:
        raise ValueError("the predictions dataset has no rows to score")
    y, pred = task.encode(frame[LABEL]), frame[PREDICTION].to_numpy(dtype=np.float64)
    for name, values in ((LABEL, y), (PREDICTION, pred)):
        if not np.isfinite(values).all():
            raise ValueError(f"the predictions dataset's {name!r} column holds {int((~np.isfinite(values)).sum())} "
                             "missing or infinite values")
    return y, pred


def metrics(task: Task, frame: pd.DataFrame, names: Collection[str] | None = None) -> dict[str, float]:
    """The scalar metrics of the predictions dataset ``frame`` (see the module docstring); only
    ``names`` of them when given."""
    from sklearn.metrics import r2_score

    y, pred = _values(task, frame)
    error = y - pred
    compute = {"rmse": lambda: np.sqrt(np.mean(error**2)), "mae": lambda: np.mean(np.abs(error)),
               "r2": lambda: r2_score(y, pred)}
    nonzero = y != 0
    if nonzero.any():
        compute["mape"] = lambda: np.mean(np.abs(error[nonzero]) / np.abs(y[nonzero]))
    return finite({name: f() for name, f in compute.items() if names is None or name in names})


def details(task: Task, frame: pd.DataFrame) -> dict[str, Any]:
    """``n`` and ``mape_rows`` (the rows whose label is not 0)."""
    y, _ = _values(task, frame)
    return {"n": int(len(y)), "mape_rows": int((y != 0).sum())}


def baseline(task: Task, train_labels: Any, n: int) -> np.ndarray:
    """The mean of ``train_labels`` as the prediction for each of ``n`` rows."""
    values = task.encode(train_labels)
    if len(values) == 0:
        raise ValueError("the baseline needs train labels; the train split has none")
    return np.full(n, float(np.mean(values)))


def group_columns(task: Task, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row ``mae`` (absolute error), ``mean_prediction`` and ``mean_label``."""
    y, pred = _values(task, frame)
    return {"mae": np.abs(y - pred), "mean_prediction": pred, "mean_label": y}

"""Multiclass: metrics, the primary metric, the trivial baseline and the fairness figures by group.

Consumes a :class:`~kfmlops.tasks.Task` and a predictions dataset (columns ``label``, ``prediction``,
``proba:<class>``; see :mod:`kfmlops.tasks`); produces plain numbers. No I/O. The class helpers here
(:func:`true_codes`, :func:`probabilities`, :func:`confusion_matrix`, :func:`baseline`) serve the
binary task too, a two-class special case.

- :func:`metrics`: ``accuracy``, ``macro_f1`` and ``weighted_f1`` (over the classes present in the
  labels or the predictions, scikit-learn's default; a class never predicted scores F1 0),
  ``log_loss`` (over every class of the task) and ``roc_auc_ovr`` (one-vs-rest, macro average; only
  when every class of the task occurs in the labels, else left out).
- :func:`details`: rows ``n`` and the confusion matrix (rows: true class, columns: predicted class,
  both in task class order).
- :func:`baseline`: the prior, each class's frequency in the train labels, for every row.
- :func:`group_columns`: per-row values whose mean over a group is that group's figure: ``accuracy``
  and ``selection_rate:<class>`` (the share of the group predicted as that class);
  :data:`DISPARITIES`: ``accuracy_difference``, the largest minus the smallest accuracy over groups.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.tasks import LABEL, PREDICTION, Task

PRIMARY = "macro_f1"
DIRECTIONS = {"accuracy": "max", "macro_f1": "max", "weighted_f1": "max", "log_loss": "min", "roc_auc_ovr": "max"}
"""Each metric's direction: ``max`` (higher is better) or ``min``."""
IDEAL = {"accuracy": 1.0, "macro_f1": 1.0, "weighted_f1": 1.0, "log_loss": 0.0, "roc_auc_ovr": 1.0}
"""Each metric's value for a perfect model."""
DISPARITIES = {"accuracy_difference": ("difference", ("accuracy",), "max_accuracy_difference")}
"""figure -> (statistic over the gated groups, the :func:`group_columns` it reads, its FairnessConfig threshold)."""
PROBABILITY_TOLERANCE = 1e-3
"""How far a row's class probabilities may sum from 1 (float32 models); they are renormalised before scoring."""


def true_codes(task: Task, frame: pd.DataFrame) -> np.ndarray:
    """The ``label`` column as class codes; a ValueError when the predictions dataset has no labels or no rows."""
    if LABEL not in frame.columns:
        raise ValueError(f"the predictions dataset has no {LABEL!r} column: score a split that holds the label "
                         f"{task.label!r}")
    if len(frame) == 0:
        raise ValueError("the predictions dataset has no rows to score")
    return task.encode(frame[LABEL])


def predicted_codes(task: Task, frame: pd.DataFrame) -> np.ndarray:
    return task.encode(frame[PREDICTION])


def probabilities(task: Task, frame: pd.DataFrame) -> np.ndarray:
    """The ``proba:<class>`` columns ``[n, K]``, each row renormalised to sum to exactly 1."""
    from kfmlops.model_contract import scores_of

    proba = scores_of(frame, task)
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise ValueError("the predictions dataset holds class probabilities outside [0, 1]")
    sums = proba.sum(axis=1, keepdims=True)
    off = np.abs(sums[:, 0] - 1.0) > PROBABILITY_TOLERANCE
    if off.any():
        raise ValueError(f"{int(off.sum())} rows' class probabilities do not sum to 1 (e.g. {float(sums[off][0, 0]):.4g})")
    return proba / sums


def finite(values: dict[str, float]) -> dict[str, float]:
    """``values`` as floats; a ValueError names any that is not finite."""
    out = {name: float(value) for name, value in values.items()}
    bad = {name: value for name, value in out.items() if not math.isfinite(value)}
    if bad:
        raise ValueError(f"metrics {sorted(bad)} are not finite ({bad}) for these predictions")
    return out


def metrics(task: Task, frame: pd.DataFrame, names: Collection[str] | None = None) -> dict[str, float]:
    """The scalar metrics of the predictions dataset ``frame`` (see the module docstring); only
    ``names`` of them when given."""
    from sklearn import metrics as skm

    y, pred, proba = true_codes(task, frame), predicted_codes(task, frame), probabilities(task, frame)
    every = list(range(len(task.classes)))
    compute = {
        "accuracy": lambda: skm.accuracy_score(y, pred),
        "macro_f1": lambda: skm.f1_score(y, pred, average="macro", zero_division=0.0),
        "weighted_f1": lambda: skm.f1_score(y, pred, average="weighted", zero_division=0.0),
        "log_loss": lambda: skm.log_loss(y, proba, labels=every),
    }
    if len(np.unique(y)) == len(every):
        compute["roc_auc_ovr"] = lambda: skm.roc_auc_score(y, proba, multi_class="ovr", labels=every)
    return finite({name: f() for name, f in compute.items() if names is None or name in names})


def confusion_matrix(task: Task, frame: pd.DataFrame) -> list[list[int]]:
    """Counts ``[true class][predicted class]``, both in task class order."""
    from sklearn import metrics as skm

    cm = skm.confusion_matrix(true_codes(task, frame), predicted_codes(task, frame), labels=range(len(task.classes)))
    return [[int(v) for v in row] for row in cm]


def details(task: Task, frame: pd.DataFrame) -> dict[str, Any]:
    """``n`` and the confusion matrix (JSON-safe)."""
    return {"n": int(len(frame)), "confusion_matrix": confusion_matrix(task, frame)}


def baseline(task: Task, train_labels: Any, n: int) -> np.ndarray:
    """The prior: each class's share of ``train_labels`` (canonical), as ``[n, K]`` probabilities."""
    codes = task.encode(train_labels)
    if len(codes) == 0:
        raise ValueError("the baseline needs train labels; the train split has none")
    prior = np.bincount(codes, minlength=len(task.classes)) / len(codes)
    return np.tile(prior, (n, 1))


def group_columns(task: Task, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row ``accuracy`` (0/1) and ``selection_rate:<class>`` (predicted as that class, 0/1)."""
    y, pred = true_codes(task, frame), predicted_codes(task, frame)
    out = {"accuracy": (y == pred).astype(np.float64)}
    out |= {f"selection_rate:{name}": (pred == code).astype(np.float64) for code, name in enumerate(task.classes)}
    return out

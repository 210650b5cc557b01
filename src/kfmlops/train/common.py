"""What every trainer shares: the feature columns, the validation split, class weights, the
validation metric and the :class:`TrainResult`.

Consumes the train split as a DataFrame holding canonical labels (see :mod:`kfmlops.tasks`) and
its :class:`~kfmlops.tasks.Task`; produces NumPy index arrays and weights, and figures. No I/O.

The **validation metric** each trainer reports (its early stopping uses the validation *loss*, the
training objective, instead): ``roc_auc`` for binary, ``log_loss`` for multiclass, ``rmse`` (in
label units) for regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfmlops.tasks import Task

METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
"""The validation metric of each task kind."""


class TrainDataError(ValueError):
    """The train split cannot be trained on; the message names the column or class at fault."""


@dataclass(frozen=True)
class TrainResult:
    """What one training did.

    ``metric``/``val_score``: the validation metric (:data:`METRIC`) of the kept model; ``val_loss``:
    its validation loss (the objective, class-weighted like training; None for a user trainer).
    ``best_iteration``: the kept epoch (tabular-net) or boosting round (gbdt), 0-based (-1: a user
    trainer); ``iterations``: how many were run. ``model_dir``: the bundle a rank wrote, or the MLflow
    model directory :func:`kfmlops.train.train` wrote. ``samples_per_second``: rows all ranks
    trained on per second of the step loop (tabular-net). ``resumed_from_epoch``/``resumed_from_step``:
    where a resumed tabular-net run picked up (None: a fresh start). ``history``: one dict per
    epoch (tabular-net) or logged boosting round (gbdt)."""

    trainer: str
    framework: str
    task: str
    metric: str
    val_score: float
    val_loss: float | None
    best_iteration: int
    iterations: int
    train_rows: int
    val_rows: int
    features: list[str]
    model_dir: str
    device: str
    world_size: int
    seconds: float
    samples_per_second: float = 0.0
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None
    history: list[dict] = field(default_factory=list)


def feature_columns(frame: pd.DataFrame, label: str, exclude: list[str]) -> list[str]:
    """The columns a model reads: all but the label and ``train.exclude_features``, in frame order."""
    unknown = [c for c in exclude if c not in frame.columns]
    if unknown:
        raise TrainDataError(
            f"train.exclude_features names columns that are not in the data: {unknown}; it has {list(frame.columns)}"
        )
    if label not in frame.columns:
        raise TrainDataError(f"label column {label!r} is not in the train split; columns: {list(frame.columns)}")
    features = [c for c in frame.columns if c != label and c not in exclude]
    if not features:
        raise TrainDataError("no feature columns left to train on: train.exclude_features excludes them all")
    return features


def encoded_labels(frame: pd.DataFrame, task: Task) -> np.ndarray:
    """The label column as class codes (int64) or values (float64); missing labels are refused."""
    column = frame[task.label]
    if column.isna().any():
        raise TrainDataError(f"label {task.label!r} has {int(column.isna().sum())} missing value(s) in the train split")
    return task.encode(column.to_numpy())


def validation_split(y: np.ndarray, task: Task, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (validation rows, fit rows) of the encoded labels ``y``.

    Classification: stratified, each class gives ``round(n * fraction)`` rows, at least 1 and at
    most ``n - 1``, to the validation slice; a class with fewer than 2 rows is a TrainDataError
    naming it. Regression: ``round(n * fraction)`` random rows (at least 1; 2 rows needed)."""
    rng = np.random.default_rng(seed)
    if not task.is_classification:
        if len(y) < 2:
            raise TrainDataError(f"label {task.label!r}: the train split has {len(y)} row(s); training needs at least 2")
        rows = rng.permutation(len(y))
        n = min(len(y) - 1, max(1, round(len(y) * fraction)))
        return rows[:n], rows[n:]
    val, fit_rows = [], []
    for code, name in enumerate(task.classes):
        rows = rng.permutation(np.flatnonzero(y == code))
        if len(rows) < 2:
            raise TrainDataError(
                f"label {task.label!r}: class {name!r} has {len(rows)} row(s) in the train split of {len(y)}; "
                "training needs at least 2 of each class (one to fit, one to validate): add rows of that class"
            )
        n = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        val.append(rows[:n])
        fit_rows.append(rows[n:])
    return rng.permutation(np.concatenate(val)), rng.permutation(np.concatenate(fit_rows))


def sample_weights(y: np.ndarray, task: Task, fit_rows: np.ndarray, class_weight: str) -> np.ndarray:
    """Per-row loss weights (float32, every row): with ``class_weight: balanced`` on a classification
    task, class ``k`` weighs ``n / (K * n_k)`` (counted on the fit rows, so the weights average 1
    there); otherwise 1."""
    if not task.is_classification or class_weight != "balanced":
        return np.ones(len(y), dtype=np.float32)
    counts = np.bincount(y[fit_rows], minlength=len(task.classes)).astype(np.float64)
    per_class = len(fit_rows) / (len(task.classes) * np.maximum(counts, 1.0))
    return per_class[y].astype(np.float32)


def validation_metric(task: Task, y: np.ndarray, scores: np.ndarray) -> float:
    """:data:`METRIC` of ``scores`` (probabilities ``[n, K]`` or values ``[n]``) against encoded labels."""
    from sklearn.metrics import log_loss, roc_auc_score

    if task.kind == "binary":
        return float(roc_auc_score(y, scores[:, 1]))
    if task.kind == "multiclass":
        return float(log_loss(y, scores, labels=list(range(len(task.classes)))))
    return float(np.sqrt(np.mean((scores - y) ** 2)))

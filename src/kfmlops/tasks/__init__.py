"""Task types: what a label is, how it is encoded, and the shape of a model's predictions.

A :class:`Task` travels with the data and the model: ingest infers (or is told) the task from the
label's values and writes the label in its *canonical* form, class names as strings for
``binary`` and ``multiclass`` and float values for ``regression``; the task's ``classes`` are kept
beside the splits (ingest's outputs), in the model's MLflow metadata and in the predictions dataset
schema, so every later stage agrees on which class is which.

The predictions dataset (written by the predict step, read by evaluate, fairness and drift) has
one row per scored row and the columns :meth:`Task.prediction_columns` names:

- ``label``: the true label in canonical form (when the scored rows have one);
- ``prediction``: the predicted class name, or the predicted value;
- classification only: ``proba:<class>`` per class, the predicted probabilities (rows sum to 1).

Per-task metrics, the primary metric and its direction, the trivial baseline and the fairness
figures live in :mod:`kfmlops.tasks.binary`, :mod:`~kfmlops.tasks.multiclass` and
:mod:`~kfmlops.tasks.regression`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfmlops.config import TaskKind

PREDICTION = "prediction"
LABEL = "label"
PROBA_PREFIX = "proba:"
MAX_CLASSES = 100
"""A string label with more distinct values than this is refused unless ``data.task`` says multiclass."""
MAX_INTEGER_CLASSES = 20
"""An integer label with at most this many distinct values is inferred multiclass; more is regression."""


class TaskError(ValueError):
    """The label does not fit the task; the message says what to set."""


@dataclass(frozen=True)
class Task:
    """A label column's task. ``classes``: classification class names in code order (binary:
    ``(negative, positive)``); empty for regression. ``reason``: why this kind (configured or inferred)."""

    kind: TaskKind
    label: str
    classes: tuple[str, ...] = ()
    reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind == "regression" and self.classes:
            raise TaskError("a regression task has no classes")
        if self.kind == "binary" and len(self.classes) != 2:
            raise TaskError(f"a binary task has two classes, got {list(self.classes)}")
        if self.kind == "multiclass" and len(self.classes) < 2:
            raise TaskError(f"a multiclass task needs at least two classes, got {list(self.classes)}")

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def positive(self) -> str | None:
        """The binary task's positive class."""
        return self.classes[1] if self.kind == "binary" else None

    @property
    def proba_columns(self) -> list[str]:
        return [PROBA_PREFIX + c for c in self.classes]

    def prediction_columns(self) -> list[str]:
        """The predictions dataset's columns, ``label`` first."""
        return [LABEL, PREDICTION, *self.proba_columns]

    def encode(self, labels: Any) -> np.ndarray:
        """Canonical labels -> int64 class codes (classification) or float64 values (regression)."""
        values = np.asarray(labels, dtype=object)
        if not self.is_classification:
            try:
                return values.astype(np.float64)
            except (TypeError, ValueError):
                raise TaskError(f"regression label {self.label!r} has non-numeric values") from None
        lookup = {c: i for i, c in enumerate(self.classes)}
        codes = np.fromiter((lookup.get(str(v), -1) for v in values), dtype=np.int64, count=len(values))
        if (codes < 0).any():
            unknown = sorted({str(v) for v, c in zip(values, codes) if c < 0})[:5]
            raise TaskError(f"label {self.label!r} has values {unknown} outside the task's classes {list(self.classes)}")
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Class codes -> class names (object array)."""
        return np.asarray(self.classes, dtype=object)[np.asarray(codes, dtype=np.int64)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "classes": list(self.classes), "reason": self.reason}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Task":
        try:
            return cls(raw["kind"], raw["label"], tuple(str(c) for c in raw.get("classes", ())), raw.get("reason", ""))
        except KeyError as exc:
            raise TaskError(f"a task needs {exc.args[0]!r}; got {sorted(raw)}") from None


def metrics_module(task: Task | str):
    """The module holding ``task``'s (or task kind's) metrics, primary metric, baseline and fairness figures."""
    from kfmlops.tasks import binary, multiclass, regression

    return {"binary": binary, "multiclass": multiclass, "regression": regression}[getattr(task, "kind", task)]

"""What the predictor answers for each task, in V1 and V2, and reading those answers back.

Consumes a :class:`~kfmlops.tasks.Task` and scores as :meth:`kfmlops.model_contract.LoadedModel.scores`
gives them (class probabilities ``[n, K]`` in ``task.classes`` order, or values ``[n]``); produces
the response body's outputs:

============  ===================================  =============================================
task          V1 ``predictions`` (one per row)     V2 ``outputs``
============  ===================================  =============================================
binary        P(positive class), a number          ``probability`` FP64 ``[n]``, P(positive);
                                                   ``label`` BYTES ``[n]``
multiclass    ``{class: probability}``             ``probabilities`` FP64 ``[n, K]`` (columns in
                                                   class order; the output's ``classes``
                                                   parameter lists them, as JSON);
                                                   ``label`` BYTES ``[n]``
regression    the value, a number                  ``value`` FP64 ``[n]``
============  ===================================  =============================================

``label`` is the predicted class: the positive class when P(positive) >= ``threshold``, else the
negative one (binary); the most probable class (multiclass). V1 carries no label: a binary
model's number is what kfmlops served before and what the inference log
(:mod:`kfmlops.monitoring.store`) reads as P(positive), and a multiclass mapping names every
class, so the label is its largest entry.

:func:`scores_from_v1` and :func:`scores_from_v2` read answers back into scores (the deploy
stage's probe compares them with the model's own, :func:`score_diff`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from kserve.protocol.infer_type import InferOutput

from kfmlops.tasks import Task

PROBABILITY = "probability"
PROBABILITIES = "probabilities"
LABEL = "label"
VALUE = "value"


def v1_predictions(task: Task, scores: np.ndarray) -> list:
    """V1 ``predictions``: one number (binary, regression) or ``{class: probability}`` (multiclass) per row."""
    if task.kind == "binary":
        return scores[:, 1].tolist()
    if task.kind == "multiclass":
        return [dict(zip(task.classes, row)) for row in scores.tolist()]
    return scores.tolist()


def predicted_labels(task: Task, scores: np.ndarray, threshold: float) -> list[str]:
    """The predicted class name per row of classification ``scores``."""
    codes = (scores[:, 1] >= threshold).astype(np.int64) if task.kind == "binary" else scores.argmax(axis=1)
    return task.decode(codes).tolist()


def v2_outputs(task: Task, scores: np.ndarray, threshold: float) -> list[InferOutput]:
    """V2 output tensors for ``scores`` (see the module docstring)."""
    n = len(scores)
    if task.kind == "regression":
        return [InferOutput(VALUE, [n], "FP64", scores.tolist())]
    label = InferOutput(LABEL, [n], "BYTES", predicted_labels(task, scores, threshold))
    if task.kind == "binary":
        return [InferOutput(PROBABILITY, [n], "FP64", scores[:, 1].tolist()), label]
    classes = {"classes": json.dumps(list(task.classes))}
    return [InferOutput(PROBABILITIES, [n, len(task.classes)], "FP64", scores.reshape(-1).tolist(), classes), label]


def output_types(task: Task) -> list[dict]:
    """V2 model metadata: the output tensors :func:`v2_outputs` gives."""
    label = {"name": LABEL, "datatype": "BYTES", "shape": [-1]}
    if task.kind == "binary":
        return [{"name": PROBABILITY, "datatype": "FP64", "shape": [-1]}, label]
    if task.kind == "multiclass":
        return [{"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(task.classes)]}, label]
    return [{"name": VALUE, "datatype": "FP64", "shape": [-1]}]


def scores_from_v1(task: Task, predictions: Sequence) -> np.ndarray:
    """V1 ``predictions`` back into scores (the inverse of :func:`v1_predictions`); a ValueError when
    they are not of the task's form."""
    if task.kind == "multiclass":
        try:
            return np.array([[row[c] for c in task.classes] for row in predictions], dtype=np.float64)
        except (KeyError, TypeError):
            raise ValueError(f"multiclass predictions must be {{class: probability}} over {list(task.classes)}") from None
    values = np.asarray(predictions, dtype=np.float64).reshape(len(predictions))
    return np.column_stack([1.0 - values, values]) if task.kind == "binary" else values


def scores_from_v2(task: Task, outputs: Sequence[dict]) -> np.ndarray:
    """A V2 response's ``outputs`` (JSON) back into scores (the inverse of :func:`v2_outputs`)."""
    by_name = {o["name"]: o for o in outputs}
    name = {"binary": PROBABILITY, "multiclass": PROBABILITIES, "regression": VALUE}[task.kind]
    if name not in by_name:
        raise ValueError(f"the response has no {name!r} output; it has {sorted(by_name)}")
    values = np.asarray(by_name[name]["data"], dtype=np.float64)
    if task.kind == "multiclass":
        return values.reshape(-1, len(task.classes))
    return np.column_stack([1.0 - values, values]) if task.kind == "binary" else values


def score_diff(task: Task, got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference between two score arrays of the same shape: absolute for probabilities;
    for regression, where values carry units, relative to the largest expected value
    (``max |a - b| / max(1, max |b|)``: float32 arithmetic errs in proportion to the values' scale)."""
    if got.size == 0:
        return 0.0
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected)))
    return diff if task.is_classification else diff / max(1.0, float(np.max(np.abs(expected))))

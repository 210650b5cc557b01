"""Per-row attributions on raw columns, where the model has a way to give them.

Consumes a loaded model's native model (:attr:`kfmlops.model_contract.LoadedModel.native`) and rows; produces
:class:`Attributions`: for every row, how much each raw input column moved the explained output
away from a reference value. :func:`attributor` picks the method; the explain step
(:mod:`kfmlops.explain`) averages them over the test split, the predictor's ``:explain`` endpoint
answers them per row.

- ``shap-tree`` (SHAP's ``TreeExplainer``, exact TreeSHAP): our ``gbdt`` bundle (its booster, on
  the design matrix whose columns are the raw columns one to one), and a user's tree ensemble
  (scikit-learn forests and boosting, XGBoost's or LightGBM's sklearn classes), bare or as the last
  step of a scikit-learn ``Pipeline`` whose earlier steps name their outputs
  (``get_feature_names_out``): the attribution of each output column (a one-hot column, an imputed
  number) is summed back into the raw column it came from. The reference is the trees' expected
  value; the output is the model's raw one (log-odds or margin for boosted trees, probability for
  random forests).
- ``integrated-gradients`` (captum's ``IntegratedGradients``, :data:`IG_STEPS` steps): our
  ``tabular-net`` bundle, on the network's input: the concatenated embedding outputs and the
  standardised numbers. An embedding's attribution is summed over its dimensions into its column.
  The reference row is every number at 0 (the train mean after standardisation) and every
  embedding at its table's mean vector (the average category). The output is the logit (binary:
  of the positive class; multiclass: of each class) or, for regression, the value in label units.

What is explained, per task: binary, one output (the positive class's log-odds, margin or
probability); multiclass, one output per class, in the task's class order; regression, the
predicted value. Completeness holds for both methods: a row's attributions sum to its output
minus ``base`` (integrated gradients up to its integration error).

Any other model (a custom pyfunc, a linear model, a ``Pipeline`` whose outputs cannot be traced
back to raw columns) has no attributions here: :func:`attributor` raises :class:`NotExplainable`
saying why; permutation importance (:mod:`kfmlops.explain`) covers every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.model_contract import class_index
from kfmlops.tasks import Task

SHAP_TREE = "shap-tree"
INTEGRATED_GRADIENTS = "integrated-gradients"
IG_STEPS = 32
"""Integration steps of integrated gradients (captum's default is 50; 32 keeps the sum within ~1% here)."""
IG_BATCH = 8192
"""Rows x steps of one integrated-gradients forward pass (captum's ``internal_batch_size``; at least
one step of every row, which ``explain.max_rows`` and ``explain.serving_max_rows`` bound)."""


class NotExplainable(ValueError):
    """The model has no per-row attribution method here; the message says why."""


@dataclass(frozen=True)
class Attributions:
    """``values[row, output, feature]``: each raw column's contribution to each explained output;
    ``base[output]``: the output at the reference (see the module docstring)."""

    method: str
    features: list[str]
    outputs: list[str]
    output: str
    values: np.ndarray
    base: np.ndarray

    def mean_abs(self) -> list[tuple[str, float]]:
        """Mean ``|attribution|`` per feature over rows and outputs, largest first."""
        means = np.abs(self.values).mean(axis=(0, 1)) if len(self.values) else np.zeros(len(self.features))
        return sorted(zip(self.features, map(float, means)), key=lambda item: -item[1])

    def to_json(self) -> dict[str, Any]:
        """Per row ``{feature: attribution}``; multiclass ``{class: {feature: attribution}}``, and
        ``base_value`` alike."""
        def by_output(per_output) -> dict:
            return {name: value for name, value in zip(self.outputs, per_output)}

        single = len(self.outputs) == 1
        rows = [[dict(zip(self.features, map(float, output))) for output in row] for row in self.values]
        return {
            "method": self.method,
            "output": self.output,
            "base_value": float(self.base[0]) if single else by_output(map(float, self.base)),
            "explanations": [row[0] if single else by_output(row) for row in rows],
        }


def _outputs(task: Task, unit: str) -> tuple[list[str], str]:
    """What is explained for ``task``: the output names and a phrase for them."""
    if task.kind == "binary":
        return [task.positive], f"{unit} of {task.positive!r}"
    if task.kind == "multiclass":
        return list(task.classes), f"{unit} of each class"
    return [task.label], f"predicted {task.label}"


class TreeBundleAttributor:
    """``shap-tree`` on a ``gbdt`` bundle: ``(codes, numbers)`` as its preprocessor encodes them."""

    method = SHAP_TREE

    def __init__(self, bundle):
        import shap

        self.bundle = bundle
        self.features = bundle.preprocessor.feature_names
        self.explainer = shap.TreeExplainer(bundle.booster)
        self.outputs, self.output = _outputs(bundle.task, "log-odds" if bundle.task.kind == "binary" else "margin")

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.preprocessor.transform({c: frame[c] for c in self.features})

    def __call__(self, codes: np.ndarray, numbers: np.ndarray) -> Attributions:
        x = np.concatenate([codes.astype(np.float32), numbers], axis=1)
        values = _per_output(np.asarray(self.explainer.shap_values(x)), len(x), len(self.features))
        base = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        return Attributions(self.method, self.features, self.outputs, self.output, values, base)


class NetAttributor:
    """``integrated-gradients`` on a ``tabular-net`` bundle: ``(codes, numbers)`` as its preprocessor
    encodes them (see the module docstring for the reference row)."""

    method = INTEGRATED_GRADIENTS

    def __init__(self, bundle):
        import torch

        self.bundle = bundle
        net = bundle.net.eval()
        pre = bundle.preprocessor
        self.features = pre.feature_names
        self.widths = [e.embedding_dim for e in net.embeddings] + [1] * len(pre.numeric)
        with torch.no_grad():
            self.reference = torch.cat([e.weight.mean(dim=0) for e in net.embeddings] + [torch.zeros(len(pre.numeric))])
        self.scale = bundle.target.std if bundle.task.kind == "regression" else 1.0
        self.outputs, self.output = _outputs(bundle.task, "logit")

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.preprocessor.transform({c: frame[c] for c in self.features})

    def __call__(self, codes: np.ndarray, numbers: np.ndarray) -> Attributions:
        import torch
        from captum.attr import IntegratedGradients

        net = self.bundle.net
        with torch.no_grad():
            parts = [e(torch.from_numpy(codes[:, i])) for i, e in enumerate(net.embeddings)]
            inputs = torch.cat([*parts, torch.from_numpy(numbers)], dim=1)
            reference = self.reference.expand_as(inputs).contiguous()
            base = net.mlp(self.reference[None, :])[0].double().numpy() * self.scale
        ig = IntegratedGradients(net.mlp)
        per_output = []
        for k in range(len(self.outputs)):
            attributed = ig.attribute(inputs, baselines=reference, target=k, n_steps=IG_STEPS,
                                      internal_batch_size=max(IG_BATCH, len(inputs)))
            columns = torch.split(attributed.detach(), self.widths, dim=1)
            per_output.append(torch.stack([c.sum(dim=1) for c in columns], dim=1).double().numpy() * self.scale)
        values = np.stack(per_output, axis=1) if per_output else np.zeros((len(codes), 0, len(self.features)))
        if self.bundle.task.kind == "regression":
            base = base + self.bundle.target.mean
        return Attributions(self.method, self.features, self.outputs, self.output, values, base[: len(self.outputs)])


class EstimatorAttributor:
    """``shap-tree`` on a user's tree ensemble, bare or ending a scikit-learn Pipeline: one array per
    raw column (in ``features`` order) in."""

    method = SHAP_TREE

    def __init__(self, estimator, task: Task, features: list[str]):
        import shap
        from shap.utils._exceptions import InvalidModelError

        self.task = task
        self.features = list(features)
        steps = getattr(estimator, "steps", None)
        self.encoder, trees = (estimator[:-1], steps[-1][1]) if steps else (None, estimator)
        self.columns = _source_columns(self.encoder, self.features) if self.encoder is not None else None
        try:
            self.explainer = shap.TreeExplainer(trees)
        except InvalidModelError:
            raise NotExplainable(f"{type(trees).__name__} is not a tree ensemble SHAP's TreeExplainer reads") from None
        classes = getattr(trees, "classes_", None)
        self.order = [class_index(c, task) for c in classes] if task.is_classification and classes is not None else None
        self.outputs, self.output = _outputs(task, "raw model output")

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
        return tuple(frame[c].to_numpy() for c in self.features)

    def __call__(self, *arrays: np.ndarray) -> Attributions:
        frame = pd.DataFrame(dict(zip(self.features, arrays)))
        x = frame if self.encoder is None else self.encoder.transform(frame)
        if hasattr(x, "toarray"):  # a sparse one-hot encoding
            x = x.toarray()
        raw = np.asarray(self.explainer.shap_values(x))
        width = raw.shape[1] if raw.ndim > 1 else 1
        values = _per_output(raw, len(frame), width)
        base = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        if self.order is not None and values.shape[1] == len(self.order):  # per class, in the model's order
            values, base = _task_order(values, base, self.order, self.task)
        if self.columns is not None:  # encoded columns summed back into raw ones
            values = values @ self.columns
        return Attributions(self.method, self.features, self.outputs, self.output, values, base)


def _per_output(raw: np.ndarray, rows: int, features: int) -> np.ndarray:
    """SHAP's ``[n, F]`` or ``[n, F, K]`` -> ``[n, outputs, F]``."""
    raw = raw.reshape(rows, features, -1)
    return np.ascontiguousarray(raw.transpose(0, 2, 1), dtype=np.float64)


def _task_order(values: np.ndarray, base: np.ndarray, order: list[int], task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Per-class outputs in the model's class order -> the task's order (binary: the positive class only)."""
    ordered = np.empty_like(values)
    ordered[:, order] = values
    base_ordered = np.empty_like(base)
    base_ordered[order] = base
    if task.kind == "binary":
        return ordered[:, 1:], base_ordered[1:]
    return ordered, base_ordered


def _source_columns(encoder, features: list[str]) -> np.ndarray:
    """``[encoded, raw]`` 0/1: which raw column each of ``encoder``'s output columns comes from.

    Output names as scikit-learn writes them (``step__column`` or ``step__column_category``) are
    matched to the longest raw column name that the part after the last ``__`` is or starts with."""
    try:
        names = [str(n) for n in encoder.get_feature_names_out(features)]
    except (AttributeError, ValueError, TypeError) as exc:
        raise NotExplainable(f"the model's preprocessing does not name its outputs ({exc})") from None
    by_length = sorted(features, key=len, reverse=True)
    matrix = np.zeros((len(names), len(features)))
    for i, name in enumerate(names):
        tail = name.rsplit("__", 1)[-1]
        source = next((f for f in by_length if tail == f or tail.startswith(f + "_")), None)
        if source is None:
            raise NotExplainable(f"the model's encoded column {name!r} cannot be traced back to a raw column")
        matrix[i, features.index(source)] = 1.0
    return matrix


def attributor(native: Any, task: Task, features: list[str]):
    """The attribution method for a model's ``native`` (:attr:`LoadedModel.native
    <kfmlops.model_contract.LoadedModel.native>`; see the module docstring): an object with
    ``method``, ``features``, ``encode(frame) -> arrays`` and ``__call__(*arrays) -> Attributions``.
    ``features``: the raw columns a user's estimator takes, in the order of its arrays (a bundle
    knows its own). Raises :class:`NotExplainable` when the model has no method."""
    kind = getattr(native, "kind", None)
    if kind == "gbdt":
        return TreeBundleAttributor(native)
    if kind == "tabular-net":
        return NetAttributor(native)
    if native is None:
        raise NotExplainable("a model scored through its MLflow pyfunc has no per-row attribution method here")
    if not features:
        raise NotExplainable("the model names no input columns (no kfmlops metadata and no signature)")
    return EstimatorAttributor(native, task, features)

"""Scorers: encoded request arrays in, scores out, one per kind of served model.

Every scorer maps the arrays its encoder (:mod:`kfmlops.serving.schema`) produces to scores as
:meth:`kfmlops.model_contract.LoadedModel.scores` gives them: class probabilities ``[n, K]`` in
``task.classes`` order, or regression values ``[n]``, float64.

- :class:`CompiledNet` (``tabular-net`` bundles): the network's forward pass compiled to a few
  NumPy operations. Each embedding table is multiplied into its slice of the first linear layer
  once, at load time, so the first layer becomes one gather-and-sum over precomputed rows plus a
  small matmul for the numeric columns; the rest of the MLP is matmuls and ReLUs; the outputs
  become scores as the bundle's own :func:`~kfmlops.train.model.scores_from_outputs` makes them
  (sigmoid, softmax, or the regression target's scale). A single row scores in tens of
  microseconds, with no PyTorch dispatch on the hot path. :func:`check_parity` runs it and the
  model's PyTorch forward pass on the same inputs; the predictor refuses to start when they differ
  by more than a tolerance.
- :class:`GbdtScorer` (``gbdt`` bundles): the encoded codes and numbers as XGBoost's design matrix,
  scored with ``Booster.inplace_predict`` (no ``DMatrix`` per request).
- :class:`ModelScorer` (any other MLflow model): the feature arrays as a DataFrame, through
  :meth:`LoadedModel.scores <kfmlops.model_contract.LoadedModel.scores>`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from kfmlops.model_contract import LoadedModel
from kfmlops.serving.outputs import score_diff
from kfmlops.serving.schema import RequestRejected
from kfmlops.tasks import Task
from kfmlops.train.gbdt import GbdtBundle
from kfmlops.train.model import ModelBundle, TabularNet, TargetScale, scores_from_outputs


class UnsupportedNet(ValueError):
    """The network has a layer the compiler does not know; the message names it."""


class CompiledNet:
    """``net(codes, numbers) -> scores``, float32 arithmetic like the PyTorch model."""

    def __init__(self, net: TabularNet, task: Task, target: TargetScale = TargetScale()):
        self.task = task
        self.target = target
        layers = list(net.mlp)
        first = layers[0]
        if not isinstance(first, nn.Linear):
            raise UnsupportedNet(f"the MLP must start with nn.Linear, not {type(first).__name__}")
        weight = first.weight.detach().double().numpy()  # [out, in]
        tables, offsets, start = [], [], 0
        for embedding in net.embeddings:
            table = embedding.weight.detach().double().numpy()  # [cardinality, dim]
            dim = table.shape[1]
            offsets.append(sum(t.shape[0] for t in tables))
            tables.append(table @ weight[:, start : start + dim].T)
            start += dim
        self.table = np.concatenate(tables).astype(np.float32) if tables else np.zeros((0, weight.shape[0]), np.float32)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.numeric_weight = np.ascontiguousarray(weight[:, start:].T, dtype=np.float32)  # [m, out]
        self.bias = first.bias.detach().numpy().astype(np.float32)
        self.layers: list[tuple[np.ndarray, np.ndarray] | None] = []  # (W.T, b) for Linear, None for ReLU
        for layer in layers[1:]:
            if isinstance(layer, nn.Linear):
                self.layers.append((layer.weight.detach().numpy().T.astype(np.float32), layer.bias.detach().numpy().astype(np.float32)))
            elif isinstance(layer, nn.ReLU):
                self.layers.append(None)
            elif not isinstance(layer, (nn.Dropout, nn.Identity)):  # both are the identity at inference
                raise UnsupportedNet(f"serving cannot compile layer {type(layer).__name__}; add it to CompiledNet")

    @classmethod
    def of(cls, bundle: ModelBundle) -> "CompiledNet":
        return cls(bundle.net, bundle.task, bundle.target)

    def outputs(self, codes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """The network's raw outputs ``[n, outputs]`` (logits, or the standardised value)."""
        hidden = numbers @ self.numeric_weight + self.bias
        if len(self.offsets):  # gather [k, n, out] with codes transposed, so the sum runs over contiguous rows
            hidden += np.take(self.table, (codes + self.offsets).T, axis=0).sum(axis=0)
        for layer in self.layers:
            if layer is None:
                np.maximum(hidden, 0.0, out=hidden)
            else:
                hidden = hidden @ layer[0] + layer[1]
        return hidden

    def __call__(self, codes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        return scores_from_outputs(self.task, self.outputs(codes, numbers), self.target)


def check_parity(compiled: CompiledNet, net: TabularNet, codes: np.ndarray, numbers: np.ndarray, tolerance: float) -> float:
    """The largest score difference (:func:`~kfmlops.serving.outputs.score_diff`) between ``compiled``
    and the PyTorch ``net`` on the same inputs; raises :class:`UnsupportedNet` past ``tolerance``."""
    with torch.inference_mode():
        outputs = net(torch.from_numpy(codes), torch.from_numpy(numbers)).numpy()
    expected = scores_from_outputs(compiled.task, outputs, compiled.target)
    diff = score_diff(compiled.task, compiled(codes, numbers), expected)
    if not diff <= tolerance:
        raise UnsupportedNet(f"the compiled forward pass differs from the PyTorch model by {diff:.3g} (> {tolerance})")
    return diff


def random_inputs(net: TabularNet, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes over each embedding's whole range and standard-normal values, for :func:`check_parity`."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, e.num_embeddings, rows) for e in net.embeddings], axis=1) if len(net.embeddings) else np.zeros((rows, 0), np.int64)
    numbers = rng.standard_normal((rows, net.mlp[0].in_features - sum(e.embedding_dim for e in net.embeddings))).astype(np.float32)
    return codes.astype(np.int64), numbers


class GbdtScorer:
    """``scorer(codes, numbers) -> scores`` of a ``gbdt`` bundle, on its design matrix (codes, then numbers)."""

    def __init__(self, bundle: GbdtBundle):
        self.bundle = bundle

    def __call__(self, codes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        return self.bundle.scores_matrix(np.concatenate([codes.astype(np.float32), numbers], axis=1))


class ModelScorer:
    """``scorer(*feature arrays) -> scores`` of any MLflow model; an MLflow error about the input (its
    schema enforcement) is the request's fault: :class:`RequestRejected` (``refused_by_model``)."""

    def __init__(self, model: LoadedModel, features: list[str]):
        self.model = model
        self.features = features

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(dict(zip(self.features, arrays)))
        try:
            return self.model.scores(frame)
        except MlflowException as exc:
            raise RequestRejected(f"the model refused the rows: {exc.message}", "refused_by_model") from None

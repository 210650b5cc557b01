"""The network's forward pass compiled to a few NumPy operations for serving.

Consumes a trained :class:`~kfmlops.train.model.TabularNet`; produces a :class:`CompiledNet` that
maps encoded features ``(int64 codes [n, k], float32 values [n, m])`` to ``P(label = 1)`` as a
float64 array. Each embedding table is multiplied into its slice of the first linear layer once,
at load time, so the first layer becomes one gather-and-sum over precomputed rows plus a small
matmul for the numeric columns; the rest of the MLP is matmuls and ReLUs. A single row scores in
tens of microseconds, with no PyTorch dispatch on the hot path.

:func:`check_parity` runs the compiled pass and the model's own PyTorch forward pass on the same
inputs; the predictor refuses to start when they differ by more than a tolerance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kfmlops.train.model import TabularNet


class UnsupportedNet(ValueError):
    """The network has a layer the compiler does not know; the message names it."""


class CompiledNet:
    """``net(codes, numbers) -> P(label = 1)``, float32 arithmetic like the PyTorch model."""

    def __init__(self, net: TabularNet):
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

    def __call__(self, codes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        hidden = numbers @ self.numeric_weight + self.bias
        if len(self.offsets):  # gather [k, n, out] with codes transposed, so the sum runs over contiguous rows
            hidden += np.take(self.table, (codes + self.offsets).T, axis=0).sum(axis=0)
        for layer in self.layers:
            if layer is None:
                np.maximum(hidden, 0.0, out=hidden)
            else:
                hidden = hidden @ layer[0] + layer[1]
        logits = hidden[:, 0]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float64)


def check_parity(compiled: CompiledNet, net: TabularNet, codes: np.ndarray, numbers: np.ndarray, tolerance: float) -> float:
    """The largest probability difference between ``compiled`` and ``net``; raises past ``tolerance``."""
    with torch.inference_mode():
        expected = torch.sigmoid(net(torch.from_numpy(codes), torch.from_numpy(numbers))).numpy().astype(np.float64)
    diff = float(np.max(np.abs(compiled(codes, numbers) - expected))) if len(codes) else 0.0
    if not diff <= tolerance:
        raise UnsupportedNet(f"the compiled forward pass differs from the PyTorch model by {diff:.3g} (> {tolerance})")
    return diff


def random_inputs(net: TabularNet, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes over each embedding's whole range and standard-normal values, for :func:`check_parity`."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, e.num_embeddings, rows) for e in net.embeddings], axis=1) if len(net.embeddings) else np.zeros((rows, 0), np.int64)
    numbers = rng.standard_normal((rows, net.mlp[0].in_features - sum(e.embedding_dim for e in net.embeddings))).astype(np.float32)
    return codes.astype(np.int64), numbers

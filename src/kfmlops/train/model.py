"""The tabular network and its bundle (``kind: tabular-net``, see :mod:`kfmlops.train.bundles`).

The network maps categorical codes and standardised numbers to ``outputs`` values per row: K
logits for a multiclass task, one logit for a binary task (P(positive) is its sigmoid), one
standardised value for a regression task (the bundle's ``target`` mean and std turn it back into
label units). Its ``model.json`` holds the architecture (:class:`NetSpec`) and that scale;
``weights.pt`` the ``state_dict``, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kfmlops.tasks import Task
from kfmlops.train.bundles import binary_scores, read_preprocessor, read_spec, require_files, write_spec
from kfmlops.train.preprocess import Preprocessor

KIND = "tabular-net"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class NetSpec:
    cardinalities: list[int]
    embedding_dims: list[int]
    n_numeric: int
    hidden_units: list[int]
    dropout: float
    outputs: int = 1

    @classmethod
    def for_data(cls, pre: Preprocessor, hidden_units: list[int], max_embedding_dim: int, dropout: float,
                 outputs: int = 1) -> "NetSpec":
        cards = [f.cardinality for f in pre.categorical]
        # fastai's rule of thumb for embedding widths, capped.
        dims = [min(max_embedding_dim, max(2, round(1.6 * c**0.56))) for c in cards]
        return cls(cards, dims, len(pre.numeric), list(hidden_units), dropout, outputs)


def outputs_for(task: Task) -> int:
    """The network's output width for ``task``: K logits (multiclass), else one."""
    return len(task.classes) if task.kind == "multiclass" else 1


class TabularNet(nn.Module):
    """Embeddings for categorical codes, concatenated with numeric values, into an MLP -> ``[n, outputs]``."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(spec.cardinalities, spec.embedding_dims))
        width = sum(spec.embedding_dims) + spec.n_numeric
        layers: list[nn.Module] = []
        for units in spec.hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = units
        layers.append(nn.Linear(width, spec.outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        parts = [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, numbers], dim=1))


@dataclass(frozen=True)
class TargetScale:
    """A regression target's standardisation: the network learns ``(y - mean) / std``."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, values: np.ndarray) -> "TargetScale":
        std = float(np.std(values))
        return cls(float(np.mean(values)), std if std > 0 else 1.0)


def scores_from_outputs(task: Task, outputs: np.ndarray, scale: TargetScale) -> np.ndarray:
    """Network outputs ``[n, outputs]`` -> probabilities ``[n, K]`` (classification) or values ``[n]``."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if task.kind == "binary":
        return binary_scores(1.0 / (1.0 + np.exp(-outputs[:, 0])))
    if task.kind == "multiclass":
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return outputs[:, 0] * scale.std + scale.mean


@dataclass
class ModelBundle:
    """A trained network ready to score raw rows; see :mod:`kfmlops.train.bundles` for ``scores``."""

    task: Task
    features: list[str]
    preprocessor: Preprocessor
    spec: NetSpec
    net: TabularNet
    target: TargetScale = TargetScale()

    kind = KIND

    @torch.inference_mode()
    def scores(self, columns: Mapping[str, Any]) -> np.ndarray:
        codes, numbers = self.preprocessor.transform(columns)
        self.net.eval()
        outputs = self.net(torch.from_numpy(codes), torch.from_numpy(numbers)).float().numpy()
        return scores_from_outputs(self.task, outputs, self.target)

    def save(self, directory: str | Path) -> Path:
        directory = write_spec(directory, KIND, self.task, self.features, self.preprocessor,
                               net=asdict(self.spec), target=asdict(self.target))
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        require_files(directory, WEIGHTS_FILE)
        meta = read_spec(directory)
        spec = NetSpec(**meta["net"])
        net = TabularNet(spec)
        net.load_state_dict(torch.load(Path(directory) / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
        net.eval()
        return cls(Task.from_json(meta["task"]), list(meta["features"]), read_preprocessor(directory), spec, net,
                   TargetScale(**meta.get("target", {})))

"""The tabular network and the model bundle (preprocessing + weights) it is saved and loaded as.

A bundle is a directory of three files, loaded without pickle:

- ``preprocess.json``: the fitted :class:`~kfmlops.train.preprocess.Preprocessor`;
- ``model.json``: the architecture (:class:`NetSpec`) and the label name;
- ``weights.pt``: the ``state_dict``, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kfmlops.train.preprocess import Preprocessor

PREPROCESS_FILE = "preprocess.json"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class NetSpec:
    cardinalities: list[int]
    embedding_dims: list[int]
    n_numeric: int
    hidden_units: list[int]
    dropout: float

    @classmethod
    def for_data(cls, pre: Preprocessor, hidden_units: list[int], max_embedding_dim: int, dropout: float) -> "NetSpec":
        cards = [f.cardinality for f in pre.categorical]
        # fastai's rule of thumb for embedding widths, capped.
        dims = [min(max_embedding_dim, max(2, round(1.6 * c**0.56))) for c in cards]
        return cls(cards, dims, len(pre.numeric), list(hidden_units), dropout)


class TabularNet(nn.Module):
    """Embeddings for categorical codes, concatenated with numeric values, into an MLP -> one logit."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(spec.cardinalities, spec.embedding_dims))
        width = sum(spec.embedding_dims) + spec.n_numeric
        layers: list[nn.Module] = []
        for units in spec.hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = units
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        parts = [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, numbers], dim=1)).squeeze(1)


@dataclass
class ModelBundle:
    """A trained model ready to score raw rows: ``predict_proba(columns) -> P(label = 1)``."""

    preprocessor: Preprocessor
    spec: NetSpec
    net: TabularNet
    label: str

    @torch.inference_mode()
    def predict_proba(self, columns: Mapping[str, object]) -> np.ndarray:
        codes, numbers = self.preprocessor.transform(columns)
        logits = self.net(torch.from_numpy(codes), torch.from_numpy(numbers))
        return torch.sigmoid(logits).numpy().astype(np.float64)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PREPROCESS_FILE).write_text(json.dumps(self.preprocessor.to_json(), indent=1))
        (directory / SPEC_FILE).write_text(json.dumps({"label": self.label, "net": asdict(self.spec)}, indent=1))
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        directory = Path(directory)
        missing = [f for f in (PREPROCESS_FILE, SPEC_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a kfmlops model bundle: missing {missing}")
        meta = json.loads((directory / SPEC_FILE).read_text())
        spec = NetSpec(**meta["net"])
        net = TabularNet(spec)
        net.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
        net.eval()
        pre = Preprocessor.from_json(json.loads((directory / PREPROCESS_FILE).read_text()))
        return cls(pre, spec, net, meta["label"])

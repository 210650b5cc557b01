"""Model bundles: a trained model of our own trainers as a directory that loads without pickle.

Every bundle directory holds:

- ``model.json``: ``kind`` (``tabular-net`` or ``gbdt``), the ``task`` (:meth:`Task.to_json`),
  the ``features`` the model reads (in the train split's order) and the kind's own settings;
- ``preprocess.json``: the fitted :class:`~kfmlops.train.preprocess.Preprocessor`;
- the weights: ``weights.pt`` (tabular-net, read with ``torch.load(weights_only=True)``) or
  ``model.ubj`` (gbdt, XGBoost's UBJSON model format).

:func:`load_bundle` reads any of them; the result has ``.kind``, ``.task``, ``.features``,
``.preprocessor`` and ``.scores(columns)``: raw feature columns (NumPy arrays or pandas Series by
name) in, class probabilities ``[n, K]`` in ``task.classes`` order (binary too: ``[n, 2]``) or
regression values ``[n]`` out, as float64.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kfmlops.tasks import Task
from kfmlops.train.preprocess import Preprocessor

SPEC_FILE = "model.json"
PREPROCESS_FILE = "preprocess.json"
KINDS = ("tabular-net", "gbdt")


class BundleError(ValueError):
    """A directory is not a bundle this version can load; the message says what is missing."""


class Bundle(Protocol):
    kind: str
    task: Task
    features: list[str]
    preprocessor: Preprocessor

    def scores(self, columns: Mapping[str, Any]) -> np.ndarray: ...

    def save(self, directory: str | Path) -> Path: ...


def load_bundle(path: str | Path) -> Bundle:
    """The bundle in directory ``path``, whichever trainer wrote it."""
    kind = read_spec(path)["kind"]
    if kind == "tabular-net":
        from kfmlops.train.model import ModelBundle

        return ModelBundle.load(path)
    from kfmlops.train.gbdt import GbdtBundle

    return GbdtBundle.load(path)


def read_spec(path: str | Path) -> dict[str, Any]:
    """``model.json`` of the bundle at ``path``, its ``kind`` checked."""
    spec_file = Path(path) / SPEC_FILE
    if not spec_file.is_file():
        raise BundleError(f"{path} is not a kfmlops model bundle: it has no {SPEC_FILE}")
    spec = json.loads(spec_file.read_text())
    if spec.get("kind") not in KINDS:
        raise BundleError(
            f"{spec_file} names kind {spec.get('kind')!r}; this kfmlops loads {list(KINDS)} (a bundle without a kind "
            "was written before bundles carried their task: retrain it)"
        )
    return spec


def write_spec(directory: str | Path, kind: str, task: Task, features: list[str], pre: Preprocessor,
               **settings: Any) -> Path:
    """Create ``directory`` with ``model.json`` (kind, task, features, ``settings``) and ``preprocess.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {"kind": kind, "task": task.to_json(), "features": list(features), **settings}
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    (directory / PREPROCESS_FILE).write_text(json.dumps(pre.to_json(), indent=1))
    return directory


def read_preprocessor(directory: str | Path) -> Preprocessor:
    return Preprocessor.from_json(json.loads((Path(directory) / PREPROCESS_FILE).read_text()))


def require_files(directory: str | Path, *names: str) -> None:
    missing = [n for n in (SPEC_FILE, PREPROCESS_FILE, *names) if not (Path(directory) / n).is_file()]
    if missing:
        raise BundleError(f"{directory} is not a complete kfmlops model bundle: missing {missing}")


def binary_scores(positive: np.ndarray) -> np.ndarray:
    """P(positive) ``[n]`` -> ``[n, 2]`` probabilities (negative, positive)."""
    positive = np.asarray(positive, dtype=np.float64)
    return np.column_stack([1.0 - positive, positive])

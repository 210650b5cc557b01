"""The Model artifact every component passes: an MLflow model directory, from any framework.

A Model artifact is a directory MLflow can load (an ``MLmodel`` file and a flavor: sklearn,
xgboost, pytorch, a custom pyfunc...). kfmlops adds one entry to the MLmodel ``metadata``,
``kfmlops`` (:class:`ModelInfo`): the task (kind, label, classes), the feature columns the model
reads and the trainer that made it. Our own trainers and a user's ``fit`` function write it; a
model brought from elsewhere (``dsl.importer``, a ``models:/`` URI) may lack it, and then the
task comes from the data (:func:`load` takes it).

:func:`load` returns a :class:`LoadedModel` whose :meth:`~LoadedModel.scores` gives, for any such
model, class probabilities ``[n, len(task.classes)]`` in the task's class order (classification) or
values ``[n]`` (regression):

- kfmlops bundles (``tabular-net``, ``gbdt``) are scored directly, without the pyfunc wrapper;
- an sklearn-API model (the sklearn or xgboost flavor: scikit-learn, XGBoost, LightGBM's sklearn
  classes...) through ``predict_proba``/``predict``, its ``classes_`` matched to the task's classes
  by name, or by code when they are ``0 .. K-1``;
- anything else through its pyfunc ``predict``: a DataFrame with ``proba:<class>`` (or class-name)
  columns, an ``[n, K]`` array of probabilities, a binary model's ``[n]`` P(positive), class
  labels (scored as probability 1), or regression values.

:func:`predictions` turns scores into the predictions dataset (see :mod:`kfmlops.tasks`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.tasks import LABEL, PREDICTION, PROBA_PREFIX, Task, TaskError

log = logging.getLogger(__name__)

METADATA_KEY = "kfmlops"
BUNDLE_ARTIFACT = "bundle"
MLMODEL = "MLmodel"


class ModelContractError(ValueError):
    """A Model artifact does not meet the contract; the message says what is missing or inconsistent."""


@dataclass(frozen=True)
class ModelInfo:
    """What kfmlops records about a model in its MLmodel metadata."""

    task: Task
    features: list[str]
    trainer: str

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task.to_json(), "features": list(self.features), "trainer": self.trainer}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ModelInfo":
        return cls(Task.from_json(raw["task"]), list(raw.get("features", [])), str(raw.get("trainer", "unknown")))


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MLMODEL).is_file()


def read_info(model_dir: str | Path) -> ModelInfo | None:
    """The ``kfmlops`` metadata of an MLflow model directory, or None when it has none."""
    from mlflow.models import Model

    if not is_model_dir(model_dir):
        raise ModelContractError(f"{model_dir} is not an MLflow model directory (no {MLMODEL} file)")
    raw = (Model.load(str(model_dir)).metadata or {}).get(METADATA_KEY)
    return ModelInfo.from_json(raw) if raw else None


def bundle_path(model_dir: str | Path) -> Path | None:
    """Where a kfmlops bundle sits inside an MLflow model directory (None for any other model)."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT)
    return Path(model_dir) / artifact["path"] if artifact else None


def save_bundle_model(
    bundle_dir: str | Path, out: str | Path, info: ModelInfo, input_example: pd.DataFrame
) -> Path:
    """Write a kfmlops bundle (tabular-net, gbdt) as an MLflow pyfunc model directory at ``out``.

    The pyfunc is a model from code (:mod:`kfmlops.mlflow_model`): loading it unpickles nothing.
    """
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from kfmlops import __version__, mlflow_model
    from kfmlops.train.bundles import load_bundle

    example = input_example[info.features].head(5).reset_index(drop=True)
    output = _output_frame(load_bundle(bundle_dir).scores(_columns(example)), info.task)
    mlflow.pyfunc.save_model(
        str(out),
        python_model=mlflow_model.__file__,
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=infer_signature(example, output),
        input_example=example,
        metadata={METADATA_KEY: info.to_json()},
        pip_requirements=[f"kfmlops=={__version__}"],
    )
    return Path(out)


def save_estimator(estimator: Any, out: str | Path, info: ModelInfo, input_example: pd.DataFrame) -> Path:
    """Write a user's fitted sklearn-API estimator (scikit-learn, XGBoost's or LightGBM's sklearn
    classes, a Pipeline...) as an MLflow sklearn model directory at ``out``, with kfmlops metadata."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from kfmlops import __version__

    example = input_example[info.features].head(5).reset_index(drop=True)
    mlflow.sklearn.save_model(
        estimator,
        str(out),
        signature=infer_signature(example, estimator.predict(example)),
        input_example=example,
        metadata={METADATA_KEY: info.to_json()},
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        # what the kfmlops image holds; MLflow's own inference of requirements costs 5-11 s per model
        pip_requirements=[f"kfmlops=={__version__}"],
    )
    return Path(out)


def with_info(model_dir: str | Path, info: ModelInfo) -> None:
    """Record (or replace) the kfmlops metadata of an MLflow model directory in place."""
    from mlflow.models import Model

    mlmodel = Model.load(str(model_dir))
    mlmodel.metadata = {**(mlmodel.metadata or {}), METADATA_KEY: info.to_json()}
    mlmodel.save(str(Path(model_dir) / MLMODEL))


@dataclass
class LoadedModel:
    """A Model artifact loaded for scoring; see the module docstring for what each kind returns.

    ``native``: what scores underneath, for explanations: the kfmlops bundle, or the sklearn-API
    estimator; None for a model scored through its pyfunc."""

    task: Task
    features: list[str]
    trainer: str
    _score: Any
    native: Any = None

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities ``[n, K]`` in ``task.classes`` order, or values ``[n]`` for regression."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ModelContractError(f"the model reads columns {missing} that the data lacks")
        raw = self._score(frame[self.features] if self.features else frame)
        return _check_scores(raw, self.task, len(frame))


def load(model: str | Path, task: Task | None = None) -> LoadedModel:
    """Load an MLflow model directory or a ``models:/``/``runs:/`` URI for scoring.

    ``task`` is the data's task; it is required when the model has no kfmlops metadata and must
    agree with the metadata when it has some (same kind and classes).
    """
    model_dir = Path(local_dir(str(model)))
    info = read_info(model_dir)
    if info is None and task is None:
        raise ModelContractError(
            f"{model} has no kfmlops metadata (MLmodel metadata.{METADATA_KEY}), so its task is unknown: pass the "
            "data's task"
        )
    if info is not None and task is not None and (info.task.kind, info.task.classes) != (task.kind, task.classes):
        raise ModelContractError(
            f"{model} was trained for a {info.task.kind} task with classes {list(info.task.classes)}, but the data "
            f"is {task.kind} with classes {list(task.classes)}"
        )
    task = task or info.task
    features = info.features if info else _signature_columns(model_dir)
    trainer = info.trainer if info else "imported"
    return LoadedModel(task, features, trainer, *_scorer(model_dir, task))


def predictions(task: Task, scores: np.ndarray, threshold: float = 0.5, labels: Any = None) -> pd.DataFrame:
    """The predictions dataset for ``scores`` (see :mod:`kfmlops.tasks`); ``labels``: canonical true labels."""
    frame = pd.DataFrame(index=range(len(scores)))
    if labels is not None:
        frame[LABEL] = np.asarray(labels, dtype=object if task.is_classification else np.float64)
    if task.is_classification:
        if task.kind == "binary":
            codes = (scores[:, 1] >= threshold).astype(np.int64)
        else:
            codes = scores.argmax(axis=1)
        frame[PREDICTION] = task.decode(codes)
        for j, column in enumerate(task.proba_columns):
            frame[column] = scores[:, j]
    else:
        frame[PREDICTION] = scores.astype(np.float64)
    return frame


def scores_of(frame: pd.DataFrame, task: Task) -> np.ndarray:
    """The scores held in a predictions dataset (the inverse of :func:`predictions`)."""
    if task.is_classification:
        missing = [c for c in task.proba_columns if c not in frame.columns]
        if missing:
            raise ModelContractError(f"the predictions dataset lacks columns {missing}; it has {list(frame.columns)}")
        return frame[task.proba_columns].to_numpy(dtype=np.float64)
    return frame[PREDICTION].to_numpy(dtype=np.float64)


# --- scoring each kind of model ------------------------------------------------------------------

def _scorer(model_dir: Path, task: Task) -> tuple[Any, Any]:
    """``(score(frame) -> raw scores, the native model or None)``."""
    from mlflow.models import Model

    flavors = Model.load(str(model_dir)).flavors
    bundle = bundle_path(model_dir)
    if bundle is not None:
        from kfmlops.train.bundles import load_bundle

        loaded = load_bundle(bundle)
        return (lambda frame: loaded.scores(_columns(frame))), loaded
    if "sklearn" in flavors or "xgboost" in flavors or "lightgbm" in flavors:
        estimator = _native(model_dir, flavors)
        if hasattr(estimator, "fit"):  # the sklearn API; a bare Booster goes through its pyfunc
            return (lambda frame: _estimator_scores(estimator, frame, task)), estimator
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(str(model_dir), suppress_warnings=True)
    return (lambda frame: _pyfunc_scores(pyfunc.predict(frame), task, len(frame))), None


def _native(model_dir: Path, flavors: dict):
    if "sklearn" in flavors:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(model_dir))
    if "xgboost" in flavors:
        import mlflow.xgboost

        return mlflow.xgboost.load_model(str(model_dir))
    import mlflow.lightgbm

    return mlflow.lightgbm.load_model(str(model_dir))


def _estimator_scores(estimator: Any, frame: pd.DataFrame, task: Task) -> np.ndarray:
    if not task.is_classification:
        return np.asarray(estimator.predict(frame), dtype=np.float64).reshape(-1)
    if hasattr(estimator, "predict_proba"):
        proba = np.asarray(estimator.predict_proba(frame), dtype=np.float64)
        classes = getattr(estimator, "classes_", None)
        return _reorder(proba, classes, task)
    return _one_hot(estimator.predict(frame), task)


def _reorder(proba: np.ndarray, classes: Any, task: Task) -> np.ndarray:
    """Columns of ``proba`` (in the model's ``classes`` order) rearranged into the task's class order."""
    if proba.ndim == 1:
        proba = np.column_stack([1 - proba, proba])
    if classes is None:
        if proba.shape[1] != len(task.classes):
            raise ModelContractError(f"the model gives {proba.shape[1]} class probabilities; the task has {len(task.classes)}")
        return proba
    out = np.zeros((len(proba), len(task.classes)))
    for j, cls in enumerate(classes):
        out[:, class_index(cls, task)] = proba[:, j]
    return out


def class_index(value: Any, task: Task) -> int:
    """The task's code of a model's class ``value``: by name, else as a code ``0..K-1``."""
    text = str(value.item() if isinstance(value, np.generic) else value)
    if text in task.classes:
        return task.classes.index(text)
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(task.classes):
        return int(value)
    raise ModelContractError(
        f"the model predicts class {text!r}, which is neither one of the task's classes {list(task.classes)} nor a "
        "code 0..K-1 into them"
    )


def _one_hot(labels: Any, task: Task) -> np.ndarray:
    values = np.asarray(labels).reshape(-1)
    out = np.zeros((len(values), len(task.classes)))
    out[np.arange(len(values)), [class_index(v, task) for v in values]] = 1.0
    return out


def _pyfunc_scores(raw: Any, task: Task, rows: int) -> np.ndarray:
    if isinstance(raw, pd.DataFrame):
        if task.is_classification:
            for names in (task.proba_columns, list(task.classes)):
                if all(n in raw.columns for n in names):
                    return raw[names].to_numpy(dtype=np.float64)
        if PREDICTION in raw.columns:
            raw = raw[PREDICTION]
        elif raw.shape[1] == 1:
            raw = raw.iloc[:, 0]
        else:
            raw = raw.to_numpy()
    values = np.asarray(raw)
    if not task.is_classification:
        return values.astype(np.float64).reshape(rows) if values.size == rows else values
    if values.ndim == 2 and values.shape[1] == len(task.classes) and values.dtype.kind == "f":
        return values.astype(np.float64)
    values = values.reshape(-1) if values.ndim == 2 and values.shape[1] == 1 else values
    if task.kind == "binary" and values.dtype.kind == "f" and values.size and np.nanmin(values) >= 0 \
            and np.nanmax(values) <= 1 and not np.isin(values, [0.0, 1.0]).all():
        return np.column_stack([1 - values, values])
    return _one_hot(values, task)


def _check_scores(raw: Any, task: Task, rows: int) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    want = (rows, len(task.classes)) if task.is_classification else (rows,)
    if values.shape != want:
        raise ModelContractError(f"the model returned scores of shape {values.shape}; expected {want}")
    if not np.isfinite(values).all():
        raise ModelContractError(f"the model returned {int((~np.isfinite(values)).sum())} non-finite scores")
    return values


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in frame.columns}


def _output_frame(scores: np.ndarray, task: Task) -> pd.DataFrame:
    frame = predictions(task, scores)
    return frame.drop(columns=[PREDICTION]) if task.is_classification else frame


def _signature_columns(model_dir: Path) -> list[str]:
    from mlflow.models import Model

    signature = Model.load(str(model_dir)).signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return []
    return list(signature.inputs.input_names())


def local_dir(model: str) -> str:
    """A local directory holding ``model``: the path itself, or a download of an artifact or registry URI."""
    from urllib.parse import urlparse

    if urlparse(model).scheme in ("", "file"):  # models:/ and runs:/ have a scheme but no //
        return model.removeprefix("file://")
    import tempfile

    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=tempfile.mkdtemp(prefix="kfmlops-model-"))


__all__ = [
    "BUNDLE_ARTIFACT", "LoadedModel", "METADATA_KEY", "ModelContractError", "ModelInfo", "PROBA_PREFIX", "TaskError",
    "bundle_path", "class_index", "is_model_dir", "load", "local_dir", "predictions", "read_info", "save_bundle_model", "save_estimator",
    "scores_of", "with_info",
]

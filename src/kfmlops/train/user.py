"""User trainers: ``train.trainer: "package.module:fit"`` names a function that fits any model.

The function is called as ``fit(train, label, task, params) -> model``:

- ``train``: a pandas DataFrame of the train split *less the validation slice* (the same seeded,
  stratified slice the other trainers hold out), the feature columns (``train.exclude_features``
  removed) and the label column ``label``, with canonical labels: class names (str) for
  classification, floats for regression;
- ``task``: the :class:`~kfmlops.tasks.Task` (``task.classes``: class names in code order);
- ``params``: ``train.params``, as given;
- it returns a **fitted scikit-learn-API estimator** (anything with ``fit`` and ``predict``;
  classifiers should have ``predict_proba``, else each prediction counts as probability 1:
  scikit-learn models and Pipelines, XGBoost's and LightGBM's sklearn classes...), saved with
  MLflow's sklearn flavor, or an **``mlflow.pyfunc.PythonModel``**
  whose ``predict`` returns what :mod:`kfmlops.model_contract` reads (``proba:<class>`` columns or
  an ``[n, K]`` array for classification, values for regression), saved with
  ``mlflow.pyfunc.save_model``.

The model is then loaded back through :func:`kfmlops.model_contract.load` and scored on the
validation slice, so a model the later stages could not read fails here, with the reason.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from kfmlops.config import TrainConfig
from kfmlops.tasks import Task
from kfmlops.train.common import METRIC, TrainResult, encoded_labels, feature_columns, validation_metric, validation_split


class UserTrainerError(ValueError):
    """``train.trainer`` names no usable function, or the function returned no usable model."""


def is_user_trainer(trainer: str) -> bool:
    return ":" in trainer


def resolve(trainer: str) -> Callable[..., Any]:
    """The function ``package.module:name`` names; a UserTrainerError says what is wrong with it."""
    module_name, _, function = trainer.partition(":")
    if not module_name or not function.isidentifier():
        raise UserTrainerError(f"train.trainer {trainer!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserTrainerError(
                f"train.trainer {trainer!r}: there is no module {exc.name!r} to import; install the package that "
                "provides it (in the image, for pipeline runs) or fix the module path"
            ) from None
        raise UserTrainerError(f"train.trainer {trainer!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise UserTrainerError(f"train.trainer {trainer!r}: importing {module_name!r} failed: {exc!r}") from exc
    fn = getattr(module, function, None)
    if fn is None:
        public = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UserTrainerError(
            f"train.trainer {trainer!r}: module {module_name!r} has no function {function!r} (it has {public[:10]})"
        )
    if not callable(fn):
        raise UserTrainerError(f"train.trainer {trainer!r}: {function!r} is a {type(fn).__name__}, not a function")
    return fn


def fit(frame: pd.DataFrame, task: Task, config: TrainConfig, model_out: str | Path) -> TrainResult:
    """Call the user's function on the fit rows, save what it returns as an MLflow model directory at
    ``model_out`` (with kfmlops metadata) and score it on the validation slice."""
    from kfmlops.model_contract import ModelInfo, load

    started = time.monotonic()
    fn = resolve(config.trainer)
    features = feature_columns(frame, task.label, config.exclude_features)
    y = encoded_labels(frame, task)
    val_idx, fit_idx = validation_split(y, task, config.validation_fraction, config.seed)
    columns = [*features, task.label]
    model = fn(frame.iloc[fit_idx][columns].reset_index(drop=True), task.label, task, dict(config.params))
    info = ModelInfo(task, features, config.trainer)
    framework = save(model, model_out, info, frame[features].head(5), config.trainer)
    scores = load(model_out).scores(frame.iloc[val_idx][features].reset_index(drop=True))
    metric = METRIC[task.kind]
    return TrainResult(
        trainer=config.trainer,
        framework=framework,
        task=task.kind,
        metric=metric,
        val_score=validation_metric(task, y[val_idx], scores),
        val_loss=None,
        best_iteration=-1,
        iterations=1,
        train_rows=len(fit_idx),
        val_rows=len(val_idx),
        features=features,
        model_dir=str(model_out),
        device="cpu",
        world_size=1,
        seconds=time.monotonic() - started,
    )


def save(model: Any, out: str | Path, info, example: pd.DataFrame, trainer: str) -> str:
    """Write the model ``fit`` returned as an MLflow model directory; returns its flavor
    (``sklearn`` or ``pyfunc``). A UserTrainerError names what the model lacks."""
    import mlflow.pyfunc

    from kfmlops import __version__
    from kfmlops.model_contract import save_estimator, with_info

    example = example.reset_index(drop=True)
    if isinstance(model, mlflow.pyfunc.PythonModel):
        mlflow.pyfunc.save_model(str(out), python_model=model, input_example=example,
                                 pip_requirements=[f"kfmlops=={__version__}"])
        with_info(out, info)
        return "pyfunc"
    missing = [m for m in ("fit", "predict") if not callable(getattr(model, m, None))]
    if missing:
        raise UserTrainerError(
            f"train.trainer {trainer!r} returned {type(model).__module__}.{type(model).__qualname__}, which has no "
            f"{' or '.join(missing)}: return a fitted scikit-learn-API estimator (fit, predict, predict_proba) or an "
            "mlflow.pyfunc.PythonModel"
        )
    _check_fitted(model, trainer)
    save_estimator(model, out, info, example)
    return "sklearn"


def _check_fitted(model: Any, trainer: str) -> None:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, BaseEstimator):
        return
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise UserTrainerError(
            f"train.trainer {trainer!r} returned an unfitted {type(model).__qualname__}: call its fit() before "
            "returning it"
        ) from None

"""The ``gbdt`` trainer: XGBoost's histogram trees on the Preprocessor's encoding, early-stopped on
the validation split, and its bundle (``kind: gbdt``, see :mod:`kfmlops.train.bundles`).

Consumes the train split (canonical labels), its :class:`~kfmlops.tasks.Task` and a
:class:`~kfmlops.config.TrainConfig` (``gbdt`` section; ``device``, ``seed``,
``validation_fraction``, ``class_weight``, ``min_category_count``, ``exclude_features`` shared
with the other trainers); produces a bundle directory and a :class:`~kfmlops.train.common.TrainResult`.

- **Features.** The fitted :class:`~kfmlops.train.preprocess.Preprocessor`'s output: categorical
  codes as XGBoost categorical features (feature type ``c``; code 0, missing or rare, is a category
  of its own) and the imputed, scaled numbers (trees do not mind the monotone scaling).
- **Objective.** ``binary:logistic``, ``multi:softprob`` or ``reg:squarederror``; with
  ``class_weight: balanced`` the rows carry their class's inverse-frequency weight, on the
  validation rows too, so early stopping watches the objective that is trained.
- **Early stopping.** Boosting stops after ``early_stopping_rounds`` rounds without a better
  validation loss (``logloss``/``mlogloss``/``rmse``) or at ``max_rounds``; the bundle keeps the
  trees up to the best round.
- **Device.** ``tree_method: hist`` with ``device: cuda`` when ``train.device`` resolves to a GPU
  (``auto``: a CUDA build of XGBoost and a visible GPU), else the CPU.
- The model is saved as XGBoost's UBJSON (``model.ubj``): no pickle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.config import TrainConfig
from kfmlops.tasks import Task
from kfmlops.train.bundles import binary_scores, read_preprocessor, read_spec, require_files, write_spec
from kfmlops.train.common import (
    METRIC,
    TrainResult,
    encoded_labels,
    feature_columns,
    sample_weights,
    validation_metric,
    validation_split,
)
from kfmlops.train.preprocess import Preprocessor

log = logging.getLogger(__name__)

KIND = "gbdt"
MODEL_FILE = "model.ubj"
LOG_EVERY = 10
"""``on_round`` and ``report`` are called every this many boosting rounds."""
OBJECTIVE = {"binary": ("binary:logistic", "logloss"), "multiclass": ("multi:softprob", "mlogloss"),
             "regression": ("reg:squarederror", "rmse")}
ROUND_METRIC = {"binary": "auc", "multiclass": "mlogloss", "regression": "rmse"}
"""XGBoost's per-round evaluation of each task's validation metric (:data:`~kfmlops.train.common.METRIC`):
the same figure for roc_auc (class weights scale every positive-negative pair alike) and rmse; multiclass
log loss weighted by class, like the objective."""


def xgboost():
    """The ``xgboost`` module, or an ImportError that says how to install it."""
    try:
        import xgboost as xgb
    except ImportError:
        raise ImportError(
            "train.trainer 'gbdt' needs XGBoost: pip install xgboost (CUDA build, for GPUs) or xgboost-cpu "
            "(or kfmlops[gbdt])"
        ) from None
    return xgb


def xgboost_device(choice: str) -> str:
    """``cuda`` or ``cpu`` for ``train.device``; ``cuda`` needs XGBoost's CUDA build."""
    xgb = xgboost()
    cuda_build = bool(xgb.build_info().get("USE_CUDA"))
    if choice == "cpu":
        return "cpu"
    if choice == "cuda" and not cuda_build:
        raise RuntimeError(
            "train.device is 'cuda' but the installed XGBoost is a CPU-only build (xgboost-cpu): pip install xgboost "
            "for the CUDA build, or set train.device to 'auto' or 'cpu'"
        )
    if choice == "cuda":
        return "cuda"
    import torch

    if torch.cuda.is_available() and not cuda_build:
        log.warning("train: a GPU is visible but XGBoost is a CPU-only build (xgboost-cpu): gbdt trains on the CPU")
    return "cuda" if cuda_build and torch.cuda.is_available() else "cpu"


def design_matrix(pre: Preprocessor, columns: Mapping[str, Any]) -> np.ndarray:
    """Raw columns -> float32 ``[n, categorical + numeric]``: the codes, then the numbers."""
    codes, numbers = pre.transform(columns)
    return np.concatenate([codes.astype(np.float32), numbers], axis=1)


def feature_types(pre: Preprocessor) -> list[str]:
    return ["c"] * len(pre.categorical) + ["q"] * len(pre.numeric)


def booster_params(config: TrainConfig, task: Task, device: str) -> dict[str, Any]:
    """XGBoost's training parameters for ``config.gbdt`` and the task."""
    g = config.gbdt
    objective, loss = OBJECTIVE[task.kind]
    params = {
        "objective": objective, "eval_metric": loss, "tree_method": "hist", "device": device,
        "learning_rate": g.learning_rate, "max_depth": g.max_depth, "min_child_weight": g.min_child_weight,
        "subsample": g.subsample, "colsample_bytree": g.colsample_bytree, "lambda": g.reg_lambda,
        "max_bin": g.max_bin, "seed": config.seed,
    }
    if g.max_depth == 0:
        params["grow_policy"] = "lossguide"
    if task.kind == "multiclass":
        params["num_class"] = len(task.classes)
    if g.threads:
        params["nthread"] = g.threads
    return params


def fit(
    frame: pd.DataFrame,
    task: Task,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    report: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Boost trees on ``frame``, write the bundle to ``model_dir``; ``on_round(round, metrics)`` is
    called every :data:`LOG_EVERY` rounds with the validation loss, and ``report(round, value)`` with
    the validation metric (:data:`ROUND_METRIC`): when it returns True, boosting stops there."""
    xgb = xgboost()
    started = time.monotonic()
    device = xgboost_device(config.device)
    features = feature_columns(frame, task.label, config.exclude_features)
    y = encoded_labels(frame, task)
    val_idx, train_idx = validation_split(y, task, config.validation_fraction, config.seed)
    pre = Preprocessor.fit(frame.iloc[train_idx], features, config.min_category_count)
    x = design_matrix(pre, {c: frame[c] for c in features})
    weight = sample_weights(y, task, train_idx, config.class_weight)
    types = feature_types(pre)

    def matrix(rows: np.ndarray):
        return xgb.DMatrix(x[rows], label=y[rows], weight=weight[rows], feature_names=pre.feature_names,
                           feature_types=types, enable_categorical=True)

    loss = OBJECTIVE[task.kind][1]
    evals: dict[str, dict[str, list[float]]] = {}
    params = booster_params(config, task, device)
    if report:  # early stopping watches the last metric: the loss stays last
        params["eval_metric"] = list(dict.fromkeys([ROUND_METRIC[task.kind], loss]))
    callbacks = [_round_callback(on_round, report, loss, ROUND_METRIC[task.kind])] if on_round or report else []
    booster = xgb.train(
        params, matrix(train_idx), num_boost_round=config.gbdt.max_rounds,
        evals=[(matrix(val_idx), "val")], early_stopping_rounds=config.gbdt.early_stopping_rounds,
        evals_result=evals, verbose_eval=False, callbacks=callbacks,
    )
    best = int(booster.best_iteration)
    bundle = GbdtBundle(task, features, pre, booster[: best + 1])
    bundle.save(model_dir)
    losses = evals["val"][loss]
    metric = METRIC[task.kind]
    score = validation_metric(task, y[val_idx], bundle.scores_matrix(x[val_idx]))
    log.info("train: gbdt stopped at round %d of %d (best %d): val %s %.4f, val %s %.4f", len(losses),
             config.gbdt.max_rounds, best, loss, losses[best], metric, score)
    return TrainResult(
        trainer=KIND,
        framework="xgboost",
        task=task.kind,
        metric=metric,
        val_score=score,
        val_loss=float(losses[best]),
        best_iteration=best,
        iterations=len(losses),
        train_rows=len(train_idx),
        val_rows=len(val_idx),
        features=features,
        model_dir=str(model_dir),
        device=device,
        world_size=1,
        seconds=time.monotonic() - started,
        history=[{"round": i, f"val_{loss}": float(v)} for i, v in enumerate(losses) if i % LOG_EVERY == 0 or i == best],
    )


def _round_callback(on_round, report, loss: str, metric: str):
    """An XGBoost callback passing, every :data:`LOG_EVERY` rounds, the validation loss to ``on_round``
    and the validation metric to ``report`` (whose True stops the training)."""

    class RoundCallback(xgboost().callback.TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            if epoch % LOG_EVERY:
                return False
            if on_round:
                on_round(epoch, {f"val_{loss}": float(evals_log["val"][loss][-1])})
            return bool(report and report(epoch, float(evals_log["val"][metric][-1])))

    return RoundCallback()


@dataclass
class GbdtBundle:
    """A trained booster ready to score raw rows; see :mod:`kfmlops.train.bundles` for ``scores``."""

    task: Task
    features: list[str]
    preprocessor: Preprocessor
    booster: Any  # xgboost.Booster

    kind = KIND

    def scores(self, columns: Mapping[str, Any]) -> np.ndarray:
        return self.scores_matrix(design_matrix(self.preprocessor, columns))

    def scores_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of an already encoded :func:`design_matrix`."""
        raw = np.asarray(self.booster.inplace_predict(x), dtype=np.float64)
        if self.task.kind == "binary":
            return binary_scores(raw)
        if self.task.kind == "multiclass":  # softprob in float32: renormalise in float64
            proba = raw.reshape(len(x), len(self.task.classes))
            return proba / proba.sum(axis=1, keepdims=True)
        return raw.reshape(len(x))

    def save(self, directory: str | Path) -> Path:
        directory = write_spec(directory, KIND, self.task, self.features, self.preprocessor,
                               xgboost_version=xgboost().__version__)
        self.booster.save_model(str(directory / MODEL_FILE))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "GbdtBundle":
        xgb = xgboost()
        require_files(directory, MODEL_FILE)
        meta = read_spec(directory)
        booster = xgb.Booster(model_file=str(Path(directory) / MODEL_FILE))
        booster.set_param({"device": "cpu"})
        return cls(Task.from_json(meta["task"]), list(meta["features"]), read_preprocessor(directory), booster)

"""Train: the train split and its task in, an MLflow model directory out.

Consumes the train split Parquet written by :mod:`kfmlops.ingest` (canonical labels), its
:class:`~kfmlops.tasks.Task` and a :class:`~kfmlops.config.TrainConfig`; produces a Model
artifact as :mod:`kfmlops.model_contract` defines it (an MLflow model directory whose metadata
names the task, the features and the trainer) and a :class:`TrainResult`. ``train.trainer`` picks:

- ``tabular-net`` (:mod:`kfmlops.train.loop`): a PyTorch embedding MLP, in this process or
  ``train.processes`` local DDP ranks, checkpointed and resumable, bf16 on GPUs;
- ``gbdt`` (:mod:`kfmlops.train.gbdt`): XGBoost histogram trees, on the CPU or a GPU;
- ``package.module:fit`` (:mod:`kfmlops.train.user`): the user's function, returning a fitted
  scikit-learn-API estimator or an ``mlflow.pyfunc.PythonModel``.

The first two write a bundle (:mod:`kfmlops.train.bundles`) that :func:`save_model_dir` wraps as an
MLflow pyfunc. :func:`kfmlops.train.cluster.train_on_cluster` runs the bundle trainers as a
Kubeflow Trainer ``TrainJob`` (or a ``PyTorchJob``); its caller wraps the bundle the same way.
With an MLflow run, rank 0 logs per-epoch (gbdt: per-round) metrics to it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.tasks import Task
from kfmlops.train.bundles import load_bundle
from kfmlops.train.common import METRIC, TrainDataError, TrainResult
from kfmlops.train.distributed import WorkerSpec, check_bundle_trainer, fit_bundle, launch, run
from kfmlops.train.loop import Dist
from kfmlops.train.user import UserTrainerError, is_user_trainer

__all__ = ["METRIC", "TrainDataError", "TrainResult", "UserTrainerError", "fit_frame", "load_bundle", "read_head",
           "save_model_dir", "train"]

EXAMPLE_ROWS = 5


def train(
    train_path: str | Path,
    task: Task,
    config: TrainConfig,
    model_out: str | Path,
    *,
    mlflow: MlflowConfig | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Fit ``config.trainer`` on the train split and write an MLflow model directory at ``model_out``
    (which must not exist, or be empty). The result's ``model_dir`` is ``model_out``.

    ``tabular-net`` with ``config.processes > 1`` runs that many local DDP ranks; with
    ``config.checkpoint_dir`` set, every epoch is checkpointed there and a rerun resumes.
    """
    started = time.monotonic()
    if Path(model_out).exists() and any(Path(model_out).iterdir()):
        raise FileExistsError(f"the model output {model_out} is not empty: an MLflow model directory is written afresh")
    if is_user_trainer(config.trainer):
        from kfmlops.train import user

        return user.fit(pd.read_parquet(train_path), task, config, model_out)
    with tempfile.TemporaryDirectory(prefix="kfmlops-bundle-") as tmp:
        bundle = Path(tmp) / "bundle"
        spec = WorkerSpec(train_path=str(train_path), task=task.to_json(), config=config, model_dir=str(bundle),
                          mlflow=mlflow, run_id=run_id)
        result = run(spec, Dist()) if config.processes == 1 else launch(spec, config.processes)
        save_model_dir(bundle, model_out, read_head(train_path))
    return replace(result, model_dir=str(model_out), seconds=time.monotonic() - started)


def fit_frame(
    frame: pd.DataFrame,
    task: Task,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    report: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """One fit of ``config.trainer`` in this process on a train split already in memory (a tuner's
    trial): a bundle (a user trainer: its MLflow model directory) at ``model_dir``. ``report(step,
    validation metric)`` is called every 10 gbdt rounds or every tabular-net epoch, and stops the fit
    when it returns True; a user trainer's one fit has no steps to report."""
    if is_user_trainer(config.trainer):
        from kfmlops.train import user

        return user.fit(frame, task, config, model_dir)
    check_bundle_trainer(config, 1)
    return fit_bundle(frame, task, config, model_dir, report=report)


def save_model_dir(bundle_dir: str | Path, model_out: str | Path, example: pd.DataFrame) -> Path:
    """Wrap a bundle as an MLflow model directory at ``model_out`` (the bundle is copied into it);
    ``example``: a few train rows, the model's input example."""
    from kfmlops.model_contract import ModelInfo, save_bundle_model

    bundle = load_bundle(bundle_dir)
    return save_bundle_model(bundle_dir, model_out, ModelInfo(bundle.task, bundle.features, bundle.kind), example)


def read_head(path: str | Path, rows: int = EXAMPLE_ROWS) -> pd.DataFrame:
    """The first ``rows`` rows of a Parquet file or dataset (a local path or a URI pyarrow reads)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").head(rows).to_pandas()

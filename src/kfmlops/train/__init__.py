"""Train: the train split in, a model bundle out (PyTorch; one process or N DDP ranks).

Consumes the train split Parquet written by :mod:`kfmlops.ingest` and a
:class:`~kfmlops.config.TrainConfig`; produces a model bundle directory (see
:mod:`kfmlops.train.model`) and a :class:`TrainResult`. With an MLflow run, rank 0 logs
per-epoch metrics to it.

- :func:`train`: in this process, or ``config.processes`` local DDP ranks;
- :func:`kfmlops.train.cluster.train_on_cluster`: as a Kubeflow Trainer ``TrainJob`` (or a
  ``PyTorchJob``) of N nodes under ``torchrun``;
- :mod:`kfmlops.train.loop`: the training loop both run; :mod:`kfmlops.train.distributed`: the
  local launcher and the rank entry point ``python -m kfmlops.train SPEC``.
"""

from __future__ import annotations

from pathlib import Path

from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.train.distributed import WorkerSpec, launch, run
from kfmlops.train.loop import Dist, TrainDataError, TrainResult
from kfmlops.train.model import ModelBundle

__all__ = ["ModelBundle", "TrainDataError", "TrainResult", "train"]


def train(
    train_path: str | Path,
    label: str,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    mlflow: MlflowConfig | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Fit the tabular network; ``config.processes > 1`` runs that many local DDP ranks.

    With ``config.checkpoint_dir`` set, every epoch is checkpointed there and a rerun resumes.
    """
    spec = WorkerSpec(
        train_path=str(train_path),
        label=label,
        config=config,
        model_dir=str(model_dir),
        mlflow=mlflow,
        run_id=run_id,
    )
    if config.processes == 1:
        return run(spec, Dist())
    return launch(spec, config.processes)

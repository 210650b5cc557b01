"""Where runs and models are recorded: the MLflow tracking URI and small helpers around it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kfmlops.config import MlflowConfig


def kfmlops_home() -> Path:
    """Local state (MLflow store, pipeline root): ``$KFMLOPS_HOME``, default ``./.kfmlops``."""
    return Path(os.environ.get("KFMLOPS_HOME", ".kfmlops")).resolve()


def tracking_uri(config: MlflowConfig) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else a sqlite file under :func:`kfmlops_home`."""
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = kfmlops_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def use(config: MlflowConfig) -> str:
    """Make the configured store and experiment mlflow's current ones; returns the experiment id."""
    import mlflow

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is None:
        artifact_location = None
        if uri.startswith("sqlite:///"):  # keep local artifacts beside the local store, not in ./mlruns
            artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        experiment_id = mlflow.create_experiment(config.experiment, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def epoch_logger(config: MlflowConfig, run_id: str):
    """A callback ``(epoch, metrics)`` that logs per-epoch metrics to ``run_id`` in one batch call."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(config))

    def log(epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])

    return log


def start_run(config: MlflowConfig, run_name: str, tags: dict[str, str]) -> str:
    """Open a run in the configured experiment and return its id (it stays open until :func:`end_run`)."""
    import mlflow

    use(config)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    mlflow.end_run("RUNNING")
    return run.info.run_id


def log_to_run(
    config: MlflowConfig,
    run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    params: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    documents: dict[str, object] | None = None,
) -> None:
    """Record a stage's figures in the pipeline's run; ``documents`` are JSON artifacts by file name."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(config))
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    for name, document in (documents or {}).items():
        client.log_dict(run_id, document, name)


def end_run(config: MlflowConfig, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri(config)).set_terminated(run_id, status)

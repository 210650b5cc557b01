"""Where runs and models are recorded: the MLflow tracking URI and small helpers around it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kfmlops.config import MlflowConfig

log = logging.getLogger(__name__)

ERROR_TAG = "kfmlops.error"
"""The tag that holds the exception that failed a run: ``Type: message``."""


def kfmlops_home() -> Path:
    """Local state (MLflow store, pipeline root): ``$KFMLOPS_HOME``, default ``./.kfmlops``."""
    return Path(os.environ.get("KFMLOPS_HOME", ".kfmlops")).resolve()


def configured_tracking_uri(config: MlflowConfig) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else a sqlite file under :func:`kfmlops_home`;
    creates nothing."""
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{kfmlops_home() / 'mlflow.db'}"


def tracking_uri(config: MlflowConfig) -> str:
    """:func:`configured_tracking_uri`, with :func:`kfmlops_home` created when the store is the default one there."""
    uri = configured_tracking_uri(config)
    if not config.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        kfmlops_home().mkdir(parents=True, exist_ok=True)
    return uri


def client(config: MlflowConfig):
    """An ``MlflowClient`` on the configured store for both tracking and the registry (never an
    ``MLFLOW_REGISTRY_URI`` left in the environment)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(config)
    return MlflowClient(uri, uri)


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

    store = client(config)

    def log(epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        store.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])

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
    texts: dict[str, str] | None = None,
) -> None:
    """Record a stage's figures in the pipeline's run; ``documents`` are JSON artifacts and ``texts``
    text artifacts (an HTML page...), by artifact path."""
    from mlflow.entities import Metric, Param, RunTag

    store = client(config)
    now = int(time.time() * 1000)
    store.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    for name, document in (documents or {}).items():
        store.log_dict(run_id, document, name)
    for name, text in (texts or {}).items():
        store.log_text(run_id, text, name)


@contextmanager
def failed_on_error(config: MlflowConfig, run_id: str) -> Iterator[None]:
    """A stage's body, recorded: when it raises, ``run_id`` is marked FAILED with the exception as its
    :data:`ERROR_TAG` tag, and the exception goes on. A store that cannot be reached then is logged, not
    raised, so the stage's own error is the one reported."""
    try:
        yield
    except Exception as exc:
        from kfmlops.register import TAG_LIMIT

        try:
            log_to_run(config, run_id, tags={ERROR_TAG: f"{type(exc).__name__}: {exc}"[:TAG_LIMIT]})
            end_run(config, run_id, "FAILED")
        except Exception as record_error:  # noqa: BLE001 - the stage's error matters more
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, record_error)
        raise


def end_run(config: MlflowConfig, run_id: str, status: str = "FINISHED") -> None:
    client(config).set_terminated(run_id, status)


def answer(exc) -> str:
    """An MlflowException's message on one line, at most 300 characters: what a CLI prints of it."""
    return " ".join(exc.message.split())[:300]

"""The drift job's reference: the served model version, its task and its training data, found by lineage.

:func:`served_model` looks the version up in the MLflow registry (by number, else by alias) and
reads its ``kfmlops.snapshot.train`` tag (the train split it was fitted on, kept by
:mod:`kfmlops.snapshots`) and its ``kfmlops.train_data`` tag (the source: a file or a database
table or query, read again with the credentials of the drift job's environment); :func:`download_model` fetches its MLflow model directory,
whose metadata holds the task the model was trained for (:func:`kfmlops.model_contract.read_info`).
:func:`load_reference` re-ingests the training data with the training config's settings, so the
reference is exactly the model's train split, with the same normalised columns and canonical
labels as the window, and gives the data's task; :func:`resolve_task` checks that the model's and
the data's agree. :func:`score_reference` runs the served model on the reference (any MLflow model,
through :func:`kfmlops.model_contract.load`): the baseline for prediction drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kfmlops.config import DataSpec, IngestConfig, MlflowConfig, PipelineConfig
from kfmlops.ingest import IngestError, detect_format, held_out_rows, normalised_table, open_filesystem, read_batches
from kfmlops.model_contract import LoadedModel, predictions
from kfmlops.register import SNAPSHOT_TAG_PREFIX, TAG_PREFIX
from kfmlops.snapshots import TASK_KEY
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError

TRAIN_DATA_TAG = TAG_PREFIX + "train_data"


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    train_data: str | None  # the kfmlops.train_data lineage tag
    model_uri: str
    train_snapshot: str | None = None  # the kfmlops.snapshot.train tag: exactly the rows it was trained on


def served_model(config: MlflowConfig, version: str | None, alias: str) -> ServedModel:
    """The registered version ``version`` (or the one ``alias`` points at) of ``config.model_name``.

    Raises ConfigError naming what is missing (the model, the version or the alias) and what the
    registry has instead.
    """
    from mlflow.exceptions import MlflowException

    from kfmlops.tracking import client as registry_client, tracking_uri

    uri = tracking_uri(config)
    client = registry_client(config)
    name = config.model_name
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ConfigError(f"no model {name!r} in the MLflow registry at {uri} (known: {', '.join(known) or 'none'}); "
                          "check mlflow.model_name in the training config") from None
    try:
        found = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    except MlflowException:
        if version:
            versions = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
            raise ConfigError(f"model {name!r} has no version {version} (versions: {', '.join(map(str, versions)) or 'none'}); "
                              "the served version is reference.model_version, else the window's most common model_version") from None
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(registered.aliases.items())) or "none"
        raise ConfigError(f"model {name!r} has no alias {alias!r} (aliases: {aliases}): promote a version first, "
                          "or set reference.alias or reference.model_version") from None
    return ServedModel(name, str(found.version), found.tags.get(TRAIN_DATA_TAG), f"models:/{name}/{found.version}",
                       found.tags.get(SNAPSHOT_TAG_PREFIX + "train"))


def download_model(served: ServedModel, config: MlflowConfig, destination: Path) -> Path:
    """The registered version's MLflow model directory, downloaded under ``destination``."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from kfmlops.tracking import client, tracking_uri

    uri = tracking_uri(config)
    source = client(config).get_model_version_download_uri(served.name, served.version)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination), tracking_uri=uri)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"model {served.name!r} version {served.version}: its model at {source} cannot be "
                          f"downloaded: {exc}") from None
    return Path(path)


def load_reference(uri: str, training: PipelineConfig) -> tuple[pa.Table, Task]:
    """The train split of ``uri`` as the training pipeline ingests it, and the label's task.

    A Parquet file that records its task (fresh data written by the retraining trigger, or any
    file in that form: normalised columns, canonical labels, maybe the predictions dataset's
    columns) is read as it is, every row training data. Any other source is ingested with the
    training config's data spec and ingest settings (the format follows ``uri``'s extension when
    it names one): every row is training data when the config has a separate test source,
    otherwise ingest cuts the same seeded test split as training did.
    """
    config = ingest_config_for(uri, training.settings.ingest)
    recorded = _recorded_task(uri) if config.format == "parquet" else None
    if recorded is not None:
        batches = list(read_batches(uri, config))
        table = pa.Table.from_batches(batches) if batches else pa.table({})
        if recorded.label not in table.column_names:
            raise ConfigError(f"{uri!r} records a task labelled {recorded.label!r} but has no such column; "
                              f"it has {table.column_names}")
        return table, recorded
    spec = training.data.model_copy(update={"source": uri, "test_source": None})
    table, task = normalised_table(uri, spec, config)
    if training.data.test_source is None:  # the same seeded split the training run's ingest cut
        table = table.filter(pa.array(~held_out_rows(table[task.label], task, config.seed, config.test_fraction)))
    return table, task


def canonical_spec(data: DataSpec, task: Task) -> DataSpec:
    """``data`` for a source whose labels are canonical for ``task``: the task set, and for a binary
    task its two class names as the positive and the negative labels (any other value fails ingest)."""
    update = {"label": task.label, "task": task.kind}
    if task.kind == "binary":
        update |= {"positive_labels": [task.positive], "negative_labels": [task.classes[0]]}
    return data.model_copy(update=update)


def ingest_config_for(uri: str, config: IngestConfig) -> IngestConfig:
    """``config`` with the format ``uri``'s extension names; the configured one when it names none."""
    try:
        return config.model_copy(update={"format": detect_format(uri, "auto")})
    except IngestError:
        return config


def _recorded_task(uri: str) -> Task | None:
    fs, path = open_filesystem(uri)
    with fs.open_input_file(path) as handle:
        metadata = pq.read_schema(handle).metadata or {}
    recorded = metadata.get(TASK_KEY)
    return Task.from_json(json.loads(recorded)) if recorded else None


def resolve_task(model: Task | None, data: Task, model_name: str, reference: str) -> Task:
    """The served model's task (its MLflow metadata; the data's when it has none), checked against the
    task its training data ``reference`` gives under the training config."""
    if model is None:
        return data
    if (model.kind, model.classes) != (data.kind, data.classes):
        raise ConfigError(
            f"{model_name} was trained for a {model.kind} task with classes {list(model.classes)}, but its training data "
            f"{reference} under the training config gives a {data.kind} task with classes {list(data.classes)}: check "
            "training_config (data.label, data.task, data.positive_labels)"
        )
    return model


def score_reference(model: LoadedModel, reference: pa.Table, threshold: float) -> pa.Table:
    """The predictions dataset's columns (``prediction``, ``proba:<class>``) of ``model`` on ``reference``."""
    features = reference.drop_columns([model.task.label]) if model.task.label in reference.column_names else reference
    scores = model.scores(features.to_pandas())
    return pa.Table.from_pandas(predictions(model.task, scores, threshold), preserve_index=False)

"""The drift job's reference: the training data of the model version being served, found by lineage.

:func:`served_model` looks the version up in the MLflow registry (by number, else by alias) and
reads its ``kfmlops.train_data`` tag. :func:`load_reference` re-ingests that data with the
training config's settings, so the reference is exactly the model's train split, with the same
normalised columns and 0/1 label as the window. :func:`score_reference` runs the served model on
it, the baseline for prediction drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kfmlops.config import IngestConfig, MlflowConfig, PipelineConfig
from kfmlops.ingest import IngestError, detect_format, in_test_split, normalised_table, open_filesystem
from kfmlops.register import TAG_PREFIX
from kfmlops.typed import ConfigError

TRAIN_DATA_TAG = TAG_PREFIX + "train_data"
POSITIVE_LABELS_KEY = b"kfmlops.positive_labels"  # Parquet metadata: how the file's label is encoded


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    train_data: str | None  # the kfmlops.train_data lineage tag
    model_uri: str


def served_model(config: MlflowConfig, version: str | None, alias: str) -> ServedModel:
    """The registered version ``version`` (or the one ``alias`` points at) of ``config.model_name``.

    Raises ConfigError naming what is missing (the model, the version or the alias) and what the
    registry has instead.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import tracking_uri

    uri = tracking_uri(config)
    client = MlflowClient(uri)
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
    return ServedModel(name, str(found.version), found.tags.get(TRAIN_DATA_TAG), f"models:/{name}/{found.version}")


def load_reference(uri: str, training: PipelineConfig) -> tuple[pa.Table, str]:
    """The train split of ``uri`` as the training pipeline ingests it, and the label's column name.

    Uses the training config's label, sensitive features and ingest settings (the format follows
    ``uri``'s extension when it names one). Every row of ``uri`` is training data when the config
    has a separate test source, or when ``uri`` is fresh data written by the retraining trigger
    (a Parquet file recording its label encoding, which is then used instead of the config's
    positive labels); otherwise ingest cuts the same seeded test split as training did.
    """
    data = training.data
    config = ingest_config_for(uri, training.settings.ingest)
    positives = _recorded_positive_labels(uri) if config.format == "parquet" else None
    whole = positives is not None or data.test_source is not None
    spec = data.model_copy(update={"source": uri, "test_source": None,
                                   "positive_labels": positives or data.positive_labels})
    table, label = normalised_table(uri, spec, config)
    if not whole:  # the same seeded split the training run's ingest cut
        table = table.filter(pa.array(~in_test_split(table.column(label).to_numpy(), config.seed, config.test_fraction)))
    return table, label


def ingest_config_for(uri: str, config: IngestConfig) -> IngestConfig:
    """``config`` with the format ``uri``'s extension names; the configured one when it names none."""
    try:
        return config.model_copy(update={"format": detect_format(uri, "auto")})
    except IngestError:
        return config


def _recorded_positive_labels(uri: str) -> list | None:
    fs, path = open_filesystem(uri)
    with fs.open_input_file(path) as handle:
        metadata = pq.read_schema(handle).metadata or {}
    recorded = metadata.get(POSITIVE_LABELS_KEY)
    return json.loads(recorded) if recorded else None


def score_reference(model_uri: str, features: pa.Table, mlflow_config: MlflowConfig) -> np.ndarray:
    """Positive-class probabilities of the registered model ``model_uri`` on ``features``."""
    import mlflow.pyfunc

    from kfmlops.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(mlflow_config))
    model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    return np.asarray(model.predict(features.to_pandas()), dtype=np.float64).reshape(len(features), -1)[:, -1]

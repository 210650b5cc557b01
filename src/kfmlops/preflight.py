"""Preflight: the mistakes in a pipeline config that can be found before any step runs.

Consumes a :class:`~kfmlops.config.PipelineConfig` and reads only the header of each data source
(the first block of a CSV or JSON Lines file, a Parquet file's footer; with a feature store, also
its registry, for the columns the join adds). :func:`check` returns
nothing, or raises with one line that says what is wrong, where, and what to do:

- :class:`~kfmlops.residency.ResidencyError`: a data source or the MLflow store outside the
  residency policy;
- :class:`~kfmlops.ingest.IngestError`: a missing, empty or directory source, a header that cannot
  be parsed, column names left empty or colliding after normalisation, a label or sensitive column
  a source lacks, a test source lacking the train source's columns;
- :class:`~kfmlops.typed.ConfigError`: a declared expectation or ``train.exclude_features`` naming
  a column the data does not have.

The task is known only once ingest has read the label: :func:`check_task_settings` is ingest's
check that the evaluate and fairness sections fit it, before any model is trained.
"""

from __future__ import annotations

from kfmlops.config import DataSpec, IngestConfig, PipelineConfig, Settings
from kfmlops.ingest import check_columns, normalise_name, normalised_names, required_columns, source_header
from kfmlops.residency import enforce
from kfmlops.tasks import Task
from kfmlops.tracking import configured_tracking_uri
from kfmlops.typed import ConfigError
from kfmlops.validate import check_expectation_columns


def check(config: PipelineConfig) -> None:
    """Raise the first mistake of ``config`` that a look at its locations and data headers finds."""
    data, settings = config.data, config.settings
    enforce({"read": [data.source, data.test_source], "mlflow": configured_tracking_uri(settings.mlflow)},
            settings.residency)
    if data.feature_store is not None:
        from kfmlops.feature_store import check_residency

        check_residency(data.feature_store, settings.residency)
    columns = kept_columns(data.source, data, settings.ingest)
    check_columns(set(columns), required_columns(data), data.source)
    if data.test_source:
        wanted = {**{c: "the train source" for c in columns}, **required_columns(data)}
        check_columns(set(kept_columns(data.test_source, data, settings.ingest)), wanted, data.test_source)
    check_expectation_columns(settings.validate_.expectations, columns, repr(data.source))
    unknown = [c for c in settings.train.exclude_features if c not in columns]
    if unknown:
        raise ConfigError(
            f"train.exclude_features names {unknown}, which {data.source!r} does not have; it has {sorted(columns)} "
            "(use the normalised snake_case names)"
        )


def check_task_settings(task: Task, settings: Settings) -> None:
    """Raise :class:`~kfmlops.evaluate.EvaluateConfigError` or :class:`~kfmlops.fairness.FairnessConfigError`
    when ``evaluate.primary_metric``, ``evaluate.limits`` or a fairness threshold belongs to another task."""
    from kfmlops.evaluate import primary_metric
    from kfmlops.fairness import check_config

    primary_metric(task, settings.evaluate)
    check_config(task, settings.fairness)


def kept_columns(uri: str, data: DataSpec, config: IngestConfig) -> list[str]:
    """The normalised names of the columns ingest keeps of ``uri``, a source of ``data`` (all but
    ``ingest.drop_columns``; with a feature store, the joined table's)."""
    drop = {normalise_name(c) for c in config.drop_columns}
    return [name for name in normalised_names(source_header(uri, data, config), uri) if name not in drop]

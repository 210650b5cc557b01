"""A Feast feature store as a training source: entity rows in, their features at their event times out.

Consumes a :class:`~kfmlops.config.FeatureStoreSource` (a Feast repository, one of its feature
services, the entity table's event time column) and an entity table: a CSV / Parquet / JSON Lines
file read as ingest reads any source, whose rows each hold an entity's join keys, an event time
and the label. Produces:

- :func:`training_table`: the entity rows, in file order, each joined with the feature service's
  feature values as they were at its event time: Feast's point-in-time join
  (``get_historical_features``), which for each feature view takes the latest feature row at or
  before the event time (and not older than the view's ``ttl``, when it has one; none found: null).
  A value recorded after the event time never reaches the row. Every entity row is kept, in file
  order, even where Feast's answer leaves it out. The event time and the join keys are then dropped
  (unless named in ``keep_columns``), so they never become model features; ingest normalises,
  splits and writes the table as it does a file's rows.
- :func:`joined_columns`: the columns :func:`training_table` gives, from the entity table's header
  and the registry alone (preflight's check, before any join).
- :func:`fingerprint_inputs`: what the dataset fingerprint covers besides the entity files: the
  canonical definition of the feature service (project, each view's name, features and types, join
  keys, ttl and batch source) and every file of the views' offline sources.
- :func:`check_residency`: the repository and registry locations, then every offline source
  location, against a residency policy.

The join runs in memory in Feast's offline store (for ``offline_store: {type: file}``, Dask over
the Parquet files): the entity table and the joined table are held whole. Only file sources
(``FileSource``) are supported: the fingerprint reads their bytes. No KFP import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pa_fs

from kfmlops.config import FeatureStoreSource, IngestConfig
from kfmlops.ingest import IngestError, open_filesystem, read_batches
from kfmlops.residency import ResidencyPolicy, enforce
from kfmlops.serving.config import FeatureStoreRef

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

FEAST_TIMESTAMP = "event_timestamp"
"""The entity table column Feast joins on; the configured timestamp column is renamed to it."""
_ROW = "__kfmlops_row"


@dataclass(frozen=True)
class View:
    """One feature view a feature service reads: its features (name, Feast type), its join keys as
    the entity rows name them (name, Feast type), and its offline source's location (resolved
    against the repository)."""

    name: str
    features: list[tuple[str, str]]
    keys: list[tuple[str, str]]
    ttl_seconds: float | None
    source: dict[str, Any]
    source_uri: str


@dataclass(frozen=True)
class Service:
    """A feature service as kfmlops uses it: the Feast object and the views it reads, in order."""

    project: str
    service: "FeatureService"
    views: list[View]

    @property
    def join_keys(self) -> list[str]:
        return list(dict.fromkeys(k for v in self.views for k, _ in v.keys))

    @property
    def features(self) -> list[str]:
        return [name for v in self.views for name, _ in v.features]

    def definition(self) -> dict[str, Any]:
        """The service's definition as canonical JSON-safe data (what the fingerprint hashes)."""
        views = [{"name": v.name, "features": v.features, "keys": v.keys, "ttl_seconds": v.ttl_seconds,
                  "source": v.source} for v in self.views]
        return {"project": self.project, "feature_service": self.service.name, "views": views}


def open_store(ref: FeatureStoreRef) -> "FeatureStore":
    """The Feast store of ``ref.repo_path``; an IngestError when it holds no ``feature_store.yaml``."""
    from feast import FeatureStore

    repo = Path(ref.repo_path)
    if not (repo / "feature_store.yaml").is_file():
        raise IngestError(f"feature store {ref.repo_path!r} has no feature_store.yaml; point repo_path at a Feast "
                          "repository (the folder `feast apply` runs in)")
    try:
        return FeatureStore(repo_path=str(repo))
    except Exception as exc:  # Feast raises its own and pydantic's errors for a bad feature_store.yaml
        raise IngestError(f"feature store {ref.repo_path!r}: {' '.join(str(exc).split())}") from None


def describe(store: "FeatureStore", ref: FeatureStoreRef) -> Service:
    """The feature service ``ref`` names and its views; an IngestError names the services there are
    when it has no such service, and a view whose source is not a file."""
    from feast.errors import FeatureServiceNotFoundException
    from feast.infra.offline_stores.file_source import FileSource

    try:
        service = store.get_feature_service(ref.feature_service)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise IngestError(f"feature store {ref.repo_path!r} has no feature service {ref.feature_service!r}; it has "
                          f"{known} (run `feast apply` there after defining it)") from None
    views = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        source = view.batch_source
        if not isinstance(source, FileSource):
            raise IngestError(f"feature view {view.name!r} reads a {type(source).__name__}; kfmlops joins feature "
                              "views over file sources (FileSource) only")
        keys = [(projection.join_key_map.get(c.name, c.name), str(c.dtype)) for c in view.entity_columns]
        views.append(View(
            name=projection.name_to_use(),
            features=[(f.name, str(f.dtype)) for f in projection.features],
            keys=keys,
            ttl_seconds=view.ttl.total_seconds() if view.ttl else None,
            source={"path": source.path, "timestamp_field": source.timestamp_field,
                    "created_timestamp_column": source.created_timestamp_column,
                    "field_mapping": dict(sorted(source.field_mapping.items()))},
            source_uri=FileSource.get_uri_for_file_path(store.repo_path, source.path),
        ))
    return Service(store.project, service, views)


def joined_columns(entity_columns: list[str], source: FeatureStoreSource, service: Service, uri: str) -> list[str]:
    """The raw columns :func:`training_table` gives for an entity table with ``entity_columns``:
    them, less the event time and the join keys not kept, then the service's features. An
    IngestError names a missing event time or join key, and a feature the entity table also has."""
    wanted = [source.timestamp_column, *service.join_keys]
    missing = [c for c in wanted if c not in entity_columns]
    if missing:
        raise IngestError(
            f"entity table {uri!r} is missing columns {missing}; it has {entity_columns} (an entity table holds the "
            f"join keys {service.join_keys} of feature service {service.service.name!r}, the event time "
            f"data.feature_store.timestamp_column {source.timestamp_column!r} and the label)"
        )
    unknown = [c for c in source.keep_columns if c not in service.join_keys]
    if unknown:
        raise IngestError(f"data.feature_store.keep_columns names {unknown}, which are not join keys of feature "
                          f"service {service.service.name!r} ({service.join_keys})")
    clash = [c for c in service.features if c in entity_columns]
    if clash:
        raise IngestError(f"entity table {uri!r} has columns {clash} that feature service {service.service.name!r} "
                          "also serves; rename them in the entity table")
    dropped = {source.timestamp_column, *(k for k in service.join_keys if k not in source.keep_columns)}
    return [c for c in entity_columns if c not in dropped] + service.features


def training_table(uri: str, source: FeatureStoreSource, config: IngestConfig) -> pa.Table:
    """The entity table at ``uri`` joined point-in-time with ``source``'s feature service (see the
    module docstring): raw column names (ingest normalises them), rows in file order."""
    store = open_store(source)
    service = describe(store, source)
    batches = list(read_batches(uri, config))
    entities = pa.Table.from_batches(batches) if batches else pa.table({})
    columns = joined_columns(entities.column_names, source, service, uri)
    if FEAST_TIMESTAMP in entities.column_names and source.timestamp_column != FEAST_TIMESTAMP:
        raise IngestError(f"entity table {uri!r} has a column {FEAST_TIMESTAMP!r} besides its event time "
                          f"{source.timestamp_column!r}: Feast joins on that name; rename it")
    times = _timestamps(entities.column(source.timestamp_column).to_pandas(), source.timestamp_column, uri)
    rows = entities.drop_columns([source.timestamp_column]).append_column(FEAST_TIMESTAMP, pa.array(times))
    keys = [*service.join_keys, FEAST_TIMESTAMP]
    try:
        joined = store.get_historical_features(entity_df=rows.select(keys).to_pandas(), features=service.service).to_arrow()
    except Exception as exc:  # a type mismatch between the entity keys and the feature views, a source unreadable
        raise IngestError(f"feature store {source.repo_path!r}: the point-in-time join of {uri!r} with feature "
                          f"service {source.feature_service!r} failed: {' '.join(str(exc).split())}") from None
    # Feast's file store leaves out an entity row whose feature rows all lie outside its window (after
    # the event, or older than the ttl) and merges rows of the same keys and time: join its values back
    # onto every entity row, by keys and time, in file order.
    values = joined.select(keys + service.features).cast(pa.schema(
        [rows.schema.field(k) for k in keys] + [joined.schema.field(f) for f in service.features]))
    rows = rows.append_column(_ROW, pa.array(np.arange(len(rows))))
    return rows.join(values, keys=keys, join_type="left outer").sort_by(_ROW).select(columns)


def _timestamps(values, column: str, uri: str):
    """Event times as UTC timestamps (naive ones read as UTC); an IngestError names a value that is not one."""
    import pandas as pd

    try:
        times = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as exc:
        raise IngestError(f"entity table {uri!r}: event time column {column!r} holds a value that is not a time "
                          f"({' '.join(str(exc).split())})") from None
    if times.isna().any():
        raise IngestError(f"entity table {uri!r}: event time column {column!r} is empty in "
                          f"{int(times.isna().sum())} rows; every entity row needs its event time")
    return times


def fingerprint_inputs(source: FeatureStoreSource) -> tuple[list[str], dict[str, Any]]:
    """What the dataset fingerprint hashes after the entity files: the files of every view's offline
    source (a folder's files in sorted order) and the feature service's canonical definition."""
    service = describe(open_store(source), source)
    files = [f for uri in dict.fromkeys(v.source_uri for v in service.views) for f in _files(uri)]
    return files, service.definition()


def _files(uri: str) -> list[str]:
    fs, path = open_filesystem(uri)
    if fs.get_file_info(path).type != pa_fs.FileType.Directory:
        return [uri]
    infos = fs.get_file_info(pa_fs.FileSelector(path, recursive=True))
    prefix = uri.rstrip("/") + "/"
    return [prefix + i.path[len(path.rstrip("/")) + 1:] for i in sorted(infos, key=lambda i: i.path)
            if i.type == pa_fs.FileType.File]


def check_residency(source: FeatureStoreSource, policy: ResidencyPolicy | None) -> None:
    """Raise :class:`~kfmlops.residency.ResidencyError` when the repository or its registry (checked
    before the registry is read) or an offline source of the feature service lies outside ``policy``."""
    if policy is None:
        return
    enforce({"read feature store": source.repo_path}, policy)
    store = open_store(source)  # reads feature_store.yaml, in the repository
    registry = store.config.registry.path
    if "://" not in registry and not Path(registry).is_absolute():
        registry = str(Path(source.repo_path) / registry)
    enforce({"read feature store": registry}, policy)
    enforce({"read features": [v.source_uri for v in describe(store, source).views]}, policy)

"""Dataset versions: the train and test splits every run used, kept as immutable, content-addressed
Parquet snapshots, so any registered version can be retrained on exactly its data.

:func:`keep` consumes ingest's split files and the label's task and produces a :class:`Snapshot`
per split at ``<directory>/<sha256>/<split>.parquet`` (``snapshots.directory``, default
``$KFMLOPS_HOME/snapshots``; a local folder or any pyarrow/fsspec URI). The address is the
:class:`~kfmlops.digest.ArrowDigest` of the split's rows (its normalised columns and canonical
labels, whatever the Parquet encoding), so the same data always lands at the same place and a
snapshot that is already there is not written again. A snapshot records its task in its Parquet
metadata (``kfmlops.task``), so it reads back as training data as it is (the drift job's
reference, ``kfmlops run --from-version``).

The ingest step logs both as MLflow dataset inputs of the run (:func:`log_inputs`: context
``training`` / ``testing``, the snapshot URI as the source, the digest's first 36 hex digits as the
dataset digest, MLflow's limit) and tags the run with their URIs (:func:`tags`); register copies
the tags onto the version (``kfmlops.snapshot.train``, ``kfmlops.snapshot.test``).

:func:`prune` applies ``snapshots.keep_last``: snapshots no protected version points at, beyond the
newest ``keep_last``, are deleted; :func:`version_snapshots` finds a version's snapshots and
:func:`retrain_config` points a pipeline config at them.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
import warnings
from dataclasses import dataclass

import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from kfmlops.config import MlflowConfig, PipelineConfig, SnapshotConfig
from kfmlops.digest import CANONICAL_ROWS, ArrowDigest
from kfmlops.ingest import open_filesystem
from kfmlops.register import SNAPSHOT_TAG_PREFIX
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CONTEXTS = {"train": "training", "test": "testing"}
"""The MLflow dataset input context of each split."""
TASK_KEY = b"kfmlops.task"
"""Parquet metadata of a snapshot (and of fresh data from the retraining trigger): its task, as JSON."""
MLFLOW_DIGEST_CHARS = 36
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Snapshot:
    """One split as kept: its URI, the SHA-256 that addresses it, its rows, and whether this call wrote it."""

    split: str
    uri: str
    digest: str
    rows: int
    written: bool


def directory(config: SnapshotConfig) -> str:
    """Where snapshots go: ``config.directory``, else ``$KFMLOPS_HOME/snapshots``."""
    from kfmlops.tracking import kfmlops_home

    return config.directory or str(kfmlops_home() / "snapshots")


def keep(splits: dict[str, str], task: Task, config: SnapshotConfig) -> dict[str, Snapshot]:
    """Snapshot each split file (``{"train": path, "test": path}``); see the module docstring."""
    return {split: _keep_one(split, path, task, directory(config)) for split, path in splits.items()}


def _keep_one(split: str, path: str, task: Task, root: str) -> Snapshot:
    fs, base = open_filesystem(root)
    fs.create_dir(base, recursive=True)
    temporary = f"{base}/.{split}-{uuid.uuid4().hex}.tmp"
    digest = ArrowDigest()
    source = pq.ParquetFile(path)
    schema = source.schema_arrow.with_metadata({TASK_KEY: json.dumps(task.to_json()).encode()})
    try:
        with fs.open_output_stream(temporary) as out, pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for batch in source.iter_batches(batch_size=CANONICAL_ROWS):
                digest.update(batch)
                writer.write_batch(batch)
        address = digest.hexdigest()
        target = f"{base}/{address}/{split}.parquet"
        written = fs.get_file_info(target).type != pa_fs.FileType.File
        if written:
            fs.create_dir(f"{base}/{address}", recursive=True)
            fs.move(temporary, target)
    finally:
        if fs.get_file_info(temporary).type == pa_fs.FileType.File:
            fs.delete_file(temporary)
    uri = f"{root.rstrip('/')}/{address}/{split}.parquet"
    log.info("snapshot: %s split %s (%d rows) at %s", split, "written" if written else "already kept", digest.rows, uri)
    return Snapshot(split, uri, address, digest.rows, written)


def tags(kept: dict[str, Snapshot]) -> dict[str, str]:
    """The tags that record where each split's snapshot is (on the run, then on the registered version)."""
    return {SNAPSHOT_TAG_PREFIX + split: s.uri for split, s in kept.items()}


def log_inputs(mlflow_config: MlflowConfig, run_id: str, kept: dict[str, Snapshot], name: str) -> None:
    """Log each snapshot as an MLflow dataset input of ``run_id`` (``name``: the datasets' name, e.g. the model's)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.schema import ColSpec, Schema

    from kfmlops.tracking import client

    inputs = []
    for split, snapshot in kept.items():
        with warnings.catch_warnings():  # a local path resolves to two equivalent local source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(snapshot.uri)
        fields = read_schema(snapshot.uri)
        schema = Schema([ColSpec(_mlflow_type(f.type), f.name) for f in fields])
        dataset = MetaDataset(source, name=f"{name}-{split}", digest=snapshot.digest[:MLFLOW_DIGEST_CHARS], schema=schema)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", CONTEXTS[split])]))
    client(mlflow_config).log_inputs(run_id, datasets=inputs)


def read_schema(uri: str):
    """A snapshot's Arrow schema (with its ``kfmlops.task`` metadata), from its footer."""
    fs, path = open_filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.read_schema(handle)


def recorded_task(uri: str) -> Task:
    """The task a snapshot records; a ConfigError when it records none (not a snapshot)."""
    recorded = (read_schema(uri).metadata or {}).get(TASK_KEY)
    if not recorded:
        raise ConfigError(f"{uri} records no task: it is not a kfmlops snapshot")
    return Task.from_json(json.loads(recorded))


def _mlflow_type(arrow_type):
    import pyarrow as pa
    from mlflow.types.schema import DataType

    if pa.types.is_boolean(arrow_type):
        return DataType.boolean
    if pa.types.is_integer(arrow_type):
        return DataType.long
    if pa.types.is_floating(arrow_type):
        return DataType.double
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return DataType.datetime
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return DataType.binary
    return DataType.string


def version_snapshots(client, name: str, version: str) -> dict[str, str]:
    """``{"train": uri, "test": uri}`` of a registered version; a RegistryError for an unknown model or
    version, a ConfigError for a version that has no snapshots or whose snapshot is gone."""
    from kfmlops.registry import get_version

    found = get_version(client, name, version)
    uris = {split: found.lineage.get(f"snapshot.{split}") for split in SPLITS}
    if not all(uris.values()):
        raise ConfigError(f"model {name!r} version {found.version} records no dataset snapshots (tags "
                          f"{SNAPSHOT_TAG_PREFIX}train/test): it was registered before kfmlops kept them")
    for uri in uris.values():
        fs, path = open_filesystem(uri)
        if fs.get_file_info(path).type != pa_fs.FileType.File:
            raise ConfigError(f"model {name!r} version {found.version}: its snapshot {uri} is gone (pruned or moved)")
    return uris


def retrain_config(config: PipelineConfig, version: str) -> PipelineConfig:
    """``config`` pointed at the snapshots of ``version`` of its model (``mlflow.model_name``): the same
    train and test rows, read as Parquet with canonical labels under the version's task; every other setting
    unchanged."""
    from kfmlops.monitoring.trigger import fresh_pipeline_config
    from kfmlops.tracking import client

    uris = version_snapshots(client(config.settings.mlflow), config.settings.mlflow.model_name, version)
    return fresh_pipeline_config(config, uris["train"], uris["test"], recorded_task(uris["train"]))


def prune(config: SnapshotConfig, client) -> list[str]:
    """Delete the snapshots beyond ``config.keep_last`` that no protected version points at (every registered
    version of any model in ``client``'s registry with ``keep_registered``, else only versions with an
    alias); the newest are kept. Produces the digests deleted; nothing when ``keep_last`` is None."""
    if config.keep_last is None:
        return []
    root = directory(config)
    fs, base = open_filesystem(root)
    if fs.get_file_info(base).type != pa_fs.FileType.Directory:
        return []
    protected = _protected(client, config.keep_registered)
    kept = []
    for info in fs.get_file_info(pa_fs.FileSelector(base)):
        if info.type == pa_fs.FileType.Directory and _DIGEST.match(info.base_name) and info.base_name not in protected:
            files = fs.get_file_info(pa_fs.FileSelector(info.path))
            kept.append((max((f.mtime for f in files if f.mtime), default=info.mtime), info.base_name, info.path))
    kept.sort(reverse=True)
    removed = []
    for _, address, path in kept[config.keep_last:]:
        fs.delete_dir(path)
        removed.append(address)
    if removed:
        log.info("snapshots: pruned %d from %s (keep_last %d): %s", len(removed), root, config.keep_last,
                 ", ".join(a[:12] for a in removed))
    return removed


def _protected(client, every_version: bool) -> set[str]:
    """The digests the protected versions' snapshot tags point at."""
    addresses = set()
    for model in _all(client.search_registered_models):
        aliased = {str(v) for v in model.aliases.values()}
        for version in _all(client.search_model_versions, filter_string=f"name='{model.name}'"):
            if every_version or str(version.version) in aliased:
                addresses |= {uri.rstrip("/").split("/")[-2] for key, uri in (version.tags or {}).items()
                              if key.startswith(SNAPSHOT_TAG_PREFIX)}
    return addresses


def _all(search, **kwargs) -> list:
    found, token = [], None
    while True:
        page = search(max_results=100, page_token=token, **kwargs)
        found += page
        token = page.token
        if not token:
            return found

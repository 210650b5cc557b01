"""The inference log: one row per prediction, in Parquet, partitioned by model and hour.

Layout under the log's root::

    predictions/model=<name>/hour=<YYYY-MM-DDTHH>/part-<ns>-<uuid>.parquet   one file per commit
    labels/part-<ns>-<uuid>.parquet                                             imported ground truth

A predictions row holds ``request_id``, ``row_index`` (position in a batched request),
``timestamp`` (UTC), ``model_version``, ``endpoint``, one ``input.<name>`` column per input and the
served output as it came, whatever the model's task:

- a number (a binary model's P(positive), a regression model's value): ``prediction`` (float64);
- a mapping of names to numbers (a multiclass model's ``{class: probability}``): one
  ``output.<name>`` column (float64) per name;
- anything else: ``output_json`` (the output as JSON).

What an output means (which class is positive, the predicted class) is the drift job's business: it
reads the output with the served model's task (:mod:`kfmlops.monitoring.drift`).

Writers (:class:`InferenceLog`) buffer rows in memory up to ``max_buffered_rows`` and commit each
partition's rows as a new file: written under a dot-prefixed temporary name, fsync'd, renamed into
place, and the directory fsync'd. Readers (and pyarrow datasets) skip dot-prefixed files, so a
crash leaves either a whole committed file or an ignored temporary, never a half-written part.
Files are never appended to or rewritten, so any number of writer processes can share a root.

Compaction (:mod:`~kfmlops.monitoring.compaction`) merges the small files of a closed hour into a
``part-<ns>-<uuid>.compacted.parquet`` file. Its invariant, which readers here rely on: the
compacted file's inputs are listed in a manifest (``_compaction-<uuid>.json`` in the hour's
directory) that is fsync'd before the file is published and removed only after every input is;
a reader counts a committed file unless a manifest lists it as an input of a compacted file the
same listing shows (:func:`hour_files`). A reader whose listing changed under it (a manifest or a
compacted file came or went between its listing before and after reading, or a listed file
vanished) reads again (:func:`read_consistently`), so no row is ever missed or counted twice.

Ground truth arrives later as a file of request id -> label; :func:`import_ground_truth` commits
it under ``labels/`` as given (canonical labels: class names, or numbers for regression; stored as
text) and :func:`read_window` left-joins it onto the predictions it reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kfmlops.config import IngestConfig
from kfmlops.durable import atomic_path, fsync_path
from kfmlops.ingest import normalise_name, read_batches
from kfmlops.monitoring.config import InferenceLogConfig

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
LABELS = "labels"
INPUT_PREFIX = "input."
OUTPUT_PREFIX = "output."
KEYS = ["request_id", "row_index"]
MANIFEST_PREFIX = "_compaction-"
COMPACTED_SUFFIX = ".compacted.parquet"
TIMESTAMP = pa.timestamp("us", tz="UTC")
_META_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("row_index", pa.int32()),
    ("timestamp", TIMESTAMP),
    ("model_version", pa.string()),
    ("endpoint", pa.string()),
    ("prediction", pa.float64()),
    ("output_json", pa.string()),
])
LABEL_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("row_index", pa.int32()), ("label", pa.string()), ("labelled_at", TIMESTAMP)
])
_STALE_TEMPORARY_S = 3600.0
_READ_ATTEMPTS = 20


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction: what went in, what came out, for which model version and request."""

    model: str
    request_id: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    output: Any = None
    row_index: int = 0
    model_version: str | None = None
    endpoint: str | None = None
    timestamp: datetime | None = None  # naive means UTC; None means now


def hour_key(ts: datetime) -> str:
    """The hour partition a UTC time falls in, e.g. ``2026-11-23T13``."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H")


def partition_dir(root: str | os.PathLike, model: str, hour: str) -> Path:
    return Path(root) / PREDICTIONS / f"model={quote(model, safe='')}" / f"hour={hour}"


class InferenceLog:
    """Appends prediction records to the log with bounded memory; thread-safe, many processes per root.

    ``append`` buffers; rows are committed when ``max_buffered_rows`` are buffered (in the appending
    thread, which is the back-pressure), every ``flush_interval_s`` by a background thread, and on
    :meth:`flush` / :meth:`close`. Rows still buffered when the process dies are lost (the sink
    keeps their events in its write-ahead log until they are committed); committed files are whole.
    """

    def __init__(self, config: InferenceLogConfig):
        self.config = config
        self.root = Path(config.root)
        (self.root / PREDICTIONS).mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.root / PREDICTIONS)
        self._lock = threading.Lock()  # guards the buffers
        self._write_lock = threading.Lock()  # one commit at a time: at most two batches of rows in memory
        self._buffers: dict[tuple[str, str], list[PredictionRecord]] = {}
        self._buffered = 0
        self.rows_committed = 0
        self.files_committed = 0
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, name="inference-log-flush", daemon=True)
        self._flusher.start()

    def append(self, records: Iterable[PredictionRecord], commit_when_full: bool = True) -> int:
        """Buffer records, committing whenever the buffer is full; returns how many were appended.

        The rows of one request (consecutive records with the same model and request id) are
        buffered, and so committed, together. A record whose timestamp has no hour partition raises
        ValueError before any record of its chunk is buffered. ``commit_when_full=False`` only
        buffers (no I/O): the caller watches :attr:`buffered` and calls :meth:`flush`.
        """
        n, chunk = 0, []
        for record in records:
            if len(chunk) >= self.config.max_buffered_rows and (record.model, record.request_id) != (
                chunk[-1].model, chunk[-1].request_id
            ):
                n += self._buffer(chunk, commit_when_full)
                chunk = []
            chunk.append(record)
        return n + self._buffer(chunk, commit_when_full)

    @property
    def buffered(self) -> int:
        """Rows buffered and not yet committed."""
        return self._buffered

    def _buffer(self, records: list[PredictionRecord], commit_when_full: bool) -> int:
        now = datetime.now(timezone.utc)
        keyed = []
        for record in records:
            ts = record.timestamp or now
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            if ts is not record.timestamp:
                record = replace(record, timestamp=ts)
            try:
                keyed.append(((record.model, hour_key(ts)), record))
            except (OverflowError, ValueError):
                raise ValueError(f"request {record.request_id!r}: timestamp {ts.isoformat()} has no UTC hour partition") from None
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the inference log is closed")
            for key, record in keyed:
                self._buffers.setdefault(key, []).append(record)
            self._buffered += len(records)
            full = self._buffered >= self.config.max_buffered_rows
        if full and commit_when_full:
            self.flush()
        return len(records)

    def flush(self) -> int:
        """Commit every buffered row, one file per partition; returns the number of rows committed.

        A partition that fails to commit is kept buffered for the next flush and the others are
        committed anyway; the first failure is raised after.
        """
        with self._write_lock:
            with self._lock:
                pending, self._buffers, self._buffered = self._buffers, {}, 0
            committed, failed, error = 0, [], None
            for (model, hour), records in pending.items():
                try:
                    commit_table(_to_table(records), partition_dir(self.root, model, hour), self.config.compression)
                except Exception as exc:
                    failed.append(((model, hour), records))
                    error = error or exc
                    continue
                committed += len(records)
                self.files_committed += 1
            self.rows_committed += committed
            if failed:
                self._requeue(failed)
                raise error
            return committed

    def close(self) -> None:
        """Stop the background flusher and commit what is buffered."""
        self._stop.set()
        self._flusher.join()
        self.flush()

    def __enter__(self) -> "InferenceLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _requeue(self, unwritten: list[tuple[tuple[str, str], list[PredictionRecord]]]) -> None:
        with self._lock:
            for key, records in unwritten:
                self._buffers[key] = records + self._buffers.get(key, [])
                self._buffered += len(records)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.config.flush_interval_s):
            try:
                self.flush()
            except Exception:  # keep flushing later; append() surfaces persistent errors to callers
                log.exception("inference log: periodic commit failed")


def _to_table(records: list[PredictionRecord]) -> pa.Table:
    outputs = [r.output for r in records]
    numeric = [_number(v) for v in outputs]
    named = [_named_numbers(v) if x is None else None for v, x in zip(outputs, numeric)]
    columns = {
        "request_id": [r.request_id for r in records],
        "row_index": [r.row_index for r in records],
        "timestamp": [r.timestamp for r in records],
        "model_version": [r.model_version for r in records],
        "endpoint": [r.endpoint for r in records],
        "prediction": numeric,
        "output_json": [None if v is None or x is not None or m is not None else json.dumps(v, default=str)
                        for v, x, m in zip(outputs, numeric, named)],
    }
    arrays = [pa.array(columns[f.name], f.type) for f in _META_SCHEMA]
    names = list(_META_SCHEMA.names)
    for name in dict.fromkeys(k for r in records for k in r.inputs):
        arrays.append(_input_array([r.inputs.get(name) for r in records]))
        names.append(INPUT_PREFIX + str(name))
    for name in dict.fromkeys(k for m in named if m for k in m):
        arrays.append(pa.array([m.get(name) if m else None for m in named], pa.float64()))
        names.append(OUTPUT_PREFIX + name)
    return pa.Table.from_arrays(arrays, names=names)


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (bool, int, float)):
        return float(value[0])
    return None


def _named_numbers(value: Any) -> dict[str, float] | None:
    """A ``{name: number}`` output (a multiclass model's class probabilities) as floats; None for any other."""
    if not isinstance(value, dict) or not value:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
        return None
    return {str(k): float(v) for k, v in value.items()}


def _input_array(values: list[Any]) -> pa.Array:
    """Typed when the values share a scalar type (ints -> int64, floats -> float64), else JSON text."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = None
    if array is not None:
        if pa.types.is_integer(array.type):
            return array.cast(pa.int64())
        if pa.types.is_floating(array.type):
            return array.cast(pa.float64())
        if pa.types.is_string(array.type) or pa.types.is_boolean(array.type) or pa.types.is_null(array.type):
            return array
    return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())


def commit_table(table: pa.Table, directory: Path, compression: str = "zstd") -> Path:
    """Write ``table`` as a new uniquely named Parquet file in ``directory``; returns its path."""
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
    return write_parquet_atomically(table, directory / name, compression)


def write_parquet_atomically(table: pa.Table, path: Path, compression: str = "zstd") -> Path:
    """Write ``table`` to ``path`` so that ``path`` is either absent, its old contents, or complete.

    Written under a dot-prefixed temporary name, fsync'd, renamed over ``path``, directory fsync'd.
    """
    _make_dirs(path.parent)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression=compression)
    return path


def _make_dirs(directory: Path) -> None:
    """mkdir -p, fsync'ing the parent of each directory created so the new entry survives a crash."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        fsync_path(path.parent)


def committed_request_ids(root: str | os.PathLike, since_ns: int) -> set[str]:
    """Request ids in the prediction files committed at or after ``since_ns`` (epoch ns, from the
    files' names; a compacted file is named after its newest input) under ``root``, every model and hour."""

    def read(files: list[Path]) -> set[str]:
        ids: set[str] = set()
        for path in files:
            try:
                committed_at = int(path.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if committed_at >= since_ns:
                ids.update(pq.read_table(path, columns=["request_id"])["request_id"].to_pylist())
        return ids

    return read_consistently(sorted((Path(root) / PREDICTIONS).glob("model=*/hour=*")), read)


def hour_files(hour_dir: Path) -> tuple[list[Path], frozenset[str]]:
    """The committed files of one hour partition that a reader counts, and the partition's
    compaction state (its manifests and compacted files), from one listing of the directory.

    A file listed as an input by a manifest whose compacted file is in the same listing is left
    out (its rows are in the compacted file); a manifest that vanished before it was read belongs
    to a compaction that finished meanwhile, which :func:`read_consistently` notices.
    """
    try:
        names = {entry.name for entry in os.scandir(hour_dir)}
    except (FileNotFoundError, NotADirectoryError):
        return [], frozenset()
    files = {n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))}
    manifests = {n for n in names if n.startswith(MANIFEST_PREFIX) and n.endswith(".json")}
    for name in manifests:
        try:
            manifest = json.loads((hour_dir / name).read_text())
        except FileNotFoundError:
            continue
        if manifest["output"] in files:
            files -= set(manifest["inputs"])
    state = frozenset(f"{hour_dir.name}/{n}" for n in names if n in manifests or n.endswith(COMPACTED_SUFFIX))
    return [hour_dir / n for n in sorted(files)], state


def read_consistently(hour_dirs: list[Path], read: Callable[[list[Path]], Any]) -> Any:
    """``read(files)`` over the counted files of ``hour_dirs`` (:func:`hour_files`), again until no
    compaction changed those partitions while it read; returns what ``read`` returned."""
    for attempt in range(_READ_ATTEMPTS):
        files, before = _listing(hour_dirs)
        try:
            result = read(files)
        except OSError:  # a listed input was removed by a compaction that finished meanwhile
            if attempt == _READ_ATTEMPTS - 1:
                raise
        else:
            if _listing(hour_dirs)[1] == before:
                return result
        time.sleep(min(0.01 * 2 ** attempt, 1.0))
    raise RuntimeError(f"compaction kept changing {len(hour_dirs)} partitions of the inference log while they were read")


def _listing(hour_dirs: list[Path]) -> tuple[list[Path], frozenset[str]]:
    files, state = [], frozenset()
    for hour_dir in hour_dirs:
        counted, compaction = hour_files(hour_dir)
        files += counted
        state |= compaction
    return files, state


def _remove_stale_temporaries(root: Path) -> None:
    """Temporaries left by crashed writers (older than an hour, so no live writer still owns them)."""
    cutoff = time.time() - _STALE_TEMPORARY_S
    for path in root.glob("**/.part-*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            continue


def import_ground_truth(
    root: str | os.PathLike, uri: str, *, label: str = "label", request_id: str = "request_id", row_index: str = "row_index"
) -> int:
    """Commit a CSV / Parquet / JSON Lines file of request id -> label under ``labels/``; returns its rows.

    Labels are kept as given, as text (numbers in their shortest exact form, booleans ``True`` /
    ``False``): canonical labels are the model's class names, or numbers for regression, and the
    drift job checks them against the served model's task. A missing ``row_index`` column means 0
    (one prediction per request). Rows without a request id or a label are skipped. Importing a
    file again is harmless: the latest label per key wins.
    """
    names = {normalise_name(n): n for n in (label, request_id, row_index)}
    directory = Path(root) / LABELS
    now = datetime.now(timezone.utc)
    total = 0
    for batch in read_batches(uri, IngestConfig()):
        columns = {normalise_name(n): batch.column(i) for i, n in enumerate(batch.schema.names)}
        missing = [names[n] for n in (normalise_name(label), normalise_name(request_id)) if n not in columns]
        if missing:
            raise ValueError(f"{uri!r}: ground truth needs columns {missing}; it has {sorted(columns)}")
        ids, raw = columns[normalise_name(request_id)], label_text(columns[normalise_name(label)])
        keep = pc.and_(pc.is_valid(ids), pc.is_valid(raw))
        rows = columns.get(normalise_name(row_index))
        table = pa.table({
            "request_id": pc.filter(ids.cast(pa.string()), keep),
            "row_index": pc.filter(rows.cast(pa.int32()) if rows is not None else pa.array([0] * len(ids), pa.int32()), keep),
            "label": pc.filter(raw, keep),
        })
        table = table.append_column("labelled_at", pa.array([now] * table.num_rows, TIMESTAMP))
        if table.num_rows:
            commit_table(table.cast(LABEL_SCHEMA), directory)
            total += table.num_rows
    return total


def label_text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Label values as text: strings trimmed (blank means no label), numbers in their shortest exact
    form (``1``, ``2.5``), booleans ``True`` / ``False`` as ingest names them; nulls kept."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_boolean(values.type):
        return pc.if_else(values, pa.scalar("True"), pa.scalar("False"))
    text = pc.utf8_trim_whitespace(values.cast(pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def window_bounds(now: datetime, hours: int, settle_minutes: float) -> tuple[datetime, datetime]:
    """``[start, end)`` of the last ``hours`` whole hours that ended at least ``settle_minutes`` before ``now``."""
    end = (now.astimezone(timezone.utc) - timedelta(minutes=settle_minutes)).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=hours), end


def logged_models(root: str | os.PathLike) -> list[str]:
    """The model names the log has a partition for, sorted."""
    directory = Path(root) / PREDICTIONS
    names = [unquote(p.name.removeprefix("model=")) for p in directory.glob("model=*")] if directory.is_dir() else []
    return sorted(names)


def window_hours(root: str | os.PathLike, model: str, start: datetime, end: datetime) -> list[Path]:
    """The hour partitions of ``model`` overlapping ``[start, end)``."""
    first, last = hour_key(start), hour_key(end - timedelta(microseconds=1))
    model_dir = partition_dir(root, model, "x").parent
    if not model_dir.is_dir():
        return []
    return [d for d in sorted(model_dir.glob("hour=*")) if first <= d.name.removeprefix("hour=") <= last]


def window_files(root: str | os.PathLike, model: str, start: datetime, end: datetime) -> list[Path]:
    """Committed Parquet files of ``model`` in hour partitions overlapping ``[start, end)``, as one
    listing counts them (:func:`hour_files`)."""
    return _listing(window_hours(root, model, start, end))[0]


def read_window(
    root: str | os.PathLike, model: str, start: datetime, end: datetime, columns: Callable[[str], bool] | None = None
) -> pa.Table:
    """Predictions of ``model`` with ``start <= timestamp < end``, left-joined with imported labels.

    ``columns`` picks the columns read by name (the key and timestamp columns are always read).
    Files whose column types differ (int vs float inputs) are unified to the wider type. The result
    has a nullable ``label`` (text, as imported) column when labels exist.
    """

    def read(files: list[Path]) -> pa.Table:
        if not files:
            return _META_SCHEMA.empty_table()
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        wanted = [n for n in schema.names if columns is None or n in (*KEYS, "timestamp") or columns(n)]
        dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
        ts = ds.field("timestamp")
        return dataset.to_table(columns=wanted, filter=(ts >= pa.scalar(start, TIMESTAMP)) & (ts < pa.scalar(end, TIMESTAMP)))

    table = read_consistently(window_hours(root, model, start, end), read)
    labels = read_labels(root)
    if labels is None or table.num_rows == 0:
        return table
    return table.append_column("label", _labels_for(table, labels))


def _labels_for(table: pa.Table, labels: pa.Table) -> pa.Array:
    """Each row's label (null when there is none), joining on the key columns only, in row order."""
    keys = table.select(KEYS).append_column("_row", pa.array(np.arange(table.num_rows)))
    matched = keys.join(labels, keys=KEYS, join_type="inner")
    positions = np.full(table.num_rows, -1, np.int64)
    positions[matched["_row"].to_numpy()] = np.arange(matched.num_rows)
    return pc.take(matched["label"], pa.array(positions, mask=positions < 0)).combine_chunks()


def read_labels(root: str | os.PathLike) -> pa.Table | None:
    """Imported labels, the latest per (request_id, row_index); None when none were imported."""
    directory = Path(root) / LABELS
    files = sorted(str(p) for p in directory.glob("*.parquet") if not p.name.startswith((".", "_"))) if directory.is_dir() else []
    if not files:
        return None
    labels = ds.dataset(files, schema=LABEL_SCHEMA, format="parquet").to_table()
    latest = labels.sort_by("labelled_at").group_by(KEYS, use_threads=False).aggregate([("label", "last")])
    return pa.table({"request_id": latest["request_id"], "row_index": latest["row_index"], "label": latest["label_last"]})


def input_columns(table: pa.Table) -> dict[str, str]:
    """``{feature name: column}`` for the ``input.*`` columns, feature names normalised as ingest does."""
    return {normalise_name(n.removeprefix(INPUT_PREFIX)): n for n in table.column_names if n.startswith(INPUT_PREFIX)}


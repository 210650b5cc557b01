"""Ingest: raw CSV / Parquet / JSON Lines, or a database table or query, in; normalised train and
test Parquet splits out.

Consumes a :class:`~kfmlops.config.DataSpec` (where the data is, the label, the sensitive columns)
and an :class:`~kfmlops.config.IngestConfig`; produces two Parquet files and an
:class:`IngestResult` (row counts, schema, label balance and a SHA-256 fingerprint of the sources
for lineage: over each file's stored bytes, and over a database result's rows as
:class:`~kfmlops.digest.ArrowDigest` canonicalises them, each source followed by a NUL). With
``data.feature_store`` set, each source is an entity table whose rows get their features from a
Feast feature service at their event times (:mod:`kfmlops.feature_store`) before anything else
happens to them, and the fingerprint then covers the feature service's offline files and its
definition too.

Data is read and written one record batch at a time, so memory stays bounded by the block size
whatever the file or result size. A ``postgresql://`` source is read by :mod:`kfmlops.warehouse`
and then goes through the same normalisation and split as a file. Column names are normalised to ``snake_case``, strings are trimmed and
NA tokens become nulls, the label is written in its task's canonical form (class names, or numbers
for regression: see :mod:`kfmlops.labels`, which also infers the task) and rows whose label is
missing (null, blank or an NA token) are dropped and counted. The test split is stratified: within
each class, every run of about ``1 / test_fraction`` rows (in file order) gives one seeded pick to
the test split, so both splits hold each class in proportion and the split does not depend on block
sizes (a regression label is one "class": a plain seeded split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from kfmlops.config import DataSpec, IngestConfig
from kfmlops.labels import LabelCoder, LabelError, split_keys
from kfmlops.tasks import Task

log = logging.getLogger(__name__)

_FORMATS_BY_SUFFIX = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zst", ".lz4"}
MIN_TRAIN_ROWS_PER_CLASS = 2
"""Training holds out a stratified validation slice: each class needs a row to fit and a row to validate."""
MIN_REGRESSION_ROWS = 10
"""A regression train split needs rows to fit, to validate and to stop early on."""
HEADER_BLOCK_BYTES = 1 << 20
"""What :func:`header` reads of a CSV or JSON Lines file: enough for its first rows."""


class IngestError(ValueError):
    """The input cannot be ingested; the message names the file, column or setting at fault."""


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` wrote. ``task``: the label's :class:`~kfmlops.tasks.Task` as JSON (kind,
    classes, why); ``label_counts``: rows of each class per split (regression: ``rows``, ``mean``,
    ``min``, ``max``); ``dropped_unlabelled``: rows dropped because their label was missing (null, blank
    or an NA token); ``label_mapping``: how many rows of each raw label value became each class, over
    every source (empty for regression)."""

    train_path: str
    test_path: str
    train_rows: int
    test_rows: int
    fingerprint: str
    label: str
    columns: dict[str, str]
    task: dict = field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped_unlabelled: int = 0
    label_mapping: dict[str, dict[str, int]] = field(default_factory=dict)


def normalise_name(name: str) -> str:
    """``" Education-Num"`` -> ``"education_num"``, ``"Catégorie"`` -> ``"catégorie"``, ``"職業"`` -> ``"職業"``:
    NFKC, lower case, and every run of characters that are not letters, marks or digits (of any
    script) becomes one ``_``; none at either end."""
    text = unicodedata.normalize("NFKC", name).lower()
    return "_".join("".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text).split())


def normalised_names(raw: list[str], uri: str) -> list[str]:
    """The normalised name of every column of ``uri``; an IngestError names a column left with no name
    and the original columns of any two that normalise to the same name."""
    names = [normalise_name(n) for n in raw]
    for position, (original, name) in enumerate(zip(raw, names), start=1):
        if not name:
            raise IngestError(
                f"{uri!r}: column {position} ({original!r}) has no letter or digit to name it by; give it a name in the header"
            )
    originals: dict[str, list[str]] = {}
    for original, name in zip(raw, names):
        originals.setdefault(name, []).append(original)
    clashes = [
        f"{group[0]!r} appears {len(group)} times" if len(set(group)) == 1
        else f"{', '.join(map(repr, group))} all become {name!r}"
        for name, group in originals.items() if len(group) > 1
    ]
    if clashes:
        raise IngestError(f"{uri!r}: column names collide ({'; '.join(clashes)}); rename columns so each name is unique")
    return names


def detect_format(uri: str, configured: str) -> str:
    if configured != "auto":
        return configured
    suffixes = [s.lower() for s in Path(uri.split("?")[0]).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    fmt = _FORMATS_BY_SUFFIX.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise IngestError(
            f"cannot tell the format of {uri!r} from its extension; "
            "set ingest.format to one of csv, parquet, jsonl"
        )
    return fmt


def open_filesystem(uri: str) -> tuple[pa_fs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path, a pyarrow URI (s3://, gs://, hdfs://) or any fsspec URI."""
    if "://" not in uri:
        return pa_fs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pa_fs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pa_fs.PyFileSystem(pa_fs.FSSpecHandler(fs)), path


def fingerprint(uris: list[str]) -> str:
    """SHA-256 over the stored bytes of each file, in order: the dataset identity recorded in lineage."""
    digest = hashlib.sha256()
    for uri in uris:
        _hash_file(uri, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def _hash_file(uri: str, digest, chunk: int = 4 << 20) -> None:
    fs, path = open_filesystem(uri)
    with fs.open_input_stream(path, compression=None) as stream:
        while block := stream.read(chunk):
            digest.update(block)


class _Fingerprint:
    """The fingerprint of the sources :meth:`read` reads, in order: a file's stored bytes (hashed once it
    has been read), a database result's rows as they are read (it cannot be read twice the same way)."""

    def __init__(self, data: DataSpec) -> None:
        self.digest = hashlib.sha256()
        self.data = data

    def read(self, uri: str, config: IngestConfig) -> Iterator[pa.RecordBatch]:
        """:func:`source_batches` of ``uri``, hashed into the fingerprint."""
        from kfmlops import warehouse
        from kfmlops.digest import ArrowDigest

        if warehouse.is_sql(uri):
            if self.data.feature_store is not None:
                raise IngestError(f"{uri}: a feature store's entity table must be a file")
            rows = ArrowDigest(self.digest)
            for batch in read_batches(uri, config):
                rows.update(batch)
                yield batch
            rows.finish()
        else:
            yield from source_batches(uri, self.data, config)
            _hash_file(uri, self.digest)
        self.digest.update(b"\0")

    def hexdigest(self) -> str:
        """The fingerprint, once every source is read; with a feature store, the bytes of every offline
        file its service's views read and the service's definition are hashed in first
        (:func:`kfmlops.feature_store.fingerprint_inputs`)."""
        if self.data.feature_store is not None:
            from kfmlops.feature_store import fingerprint_inputs

            files, definition = fingerprint_inputs(self.data.feature_store)
            for uri in files:
                _hash_file(uri, self.digest)
                self.digest.update(b"\0")
            self.digest.update(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode())
        return self.digest.hexdigest()


def check_file(uri: str) -> None:
    """An IngestError naming ``uri`` unless it is one non-empty file."""
    fs, path = open_filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise IngestError(f"cannot read {uri!r}: {exc}") from None
    if info.type == pa_fs.FileType.Directory:
        raise IngestError(f"{uri!r} is a directory; name one data file (CSV, Parquet or JSON Lines) instead")
    if info.type != pa_fs.FileType.File:
        raise IngestError(f"no such file: {uri!r}; check the path (a config file's relative paths are relative to it)")
    if info.size == 0:
        raise IngestError(f"{uri!r} is empty (0 bytes); name a file with a header and data rows")


def read_batches(uri: str, config: IngestConfig) -> Iterator[pa.RecordBatch]:
    """Raw record batches from one file or database source, with bounded memory."""
    from kfmlops import warehouse

    if warehouse.is_sql(uri):
        yield from warehouse.read_batches(uri, config)
        return
    fmt = detect_format(uri, config.format)
    check_file(uri)
    fs, path = open_filesystem(uri)
    with _parse_errors(uri, fmt, config):
        if fmt == "parquet":
            with fs.open_input_file(path) as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=config.block_rows)
            return
        with fs.open_input_stream(path, compression="detect") as stream:
            yield from _stream_reader(stream, fmt, config, config.block_size_bytes)


def source_batches(uri: str, data: DataSpec, config: IngestConfig) -> Iterator[pa.RecordBatch]:
    """Raw record batches of one source of ``data``: the file's own, or, with ``data.feature_store``,
    the file's entity rows joined with their features at their event times
    (:func:`kfmlops.feature_store.training_table`, held whole in memory)."""
    if data.feature_store is None:
        yield from read_batches(uri, config)
        return
    from kfmlops.feature_store import training_table

    yield from training_table(uri, data.feature_store, config).to_batches(max_chunksize=65_536)


def source_header(uri: str, data: DataSpec, config: IngestConfig) -> list[str]:
    """The raw column names :func:`source_batches` gives for ``uri``, from its header (and, with a
    feature store, its registry) only."""
    if data.feature_store is None:
        return header(uri, config)
    from kfmlops.feature_store import describe, joined_columns, open_store

    service = describe(open_store(data.feature_store), data.feature_store)
    return joined_columns(header(uri, config), data.feature_store, service, uri)


def header(uri: str, config: IngestConfig) -> list[str]:
    """The raw column names of ``uri``, read from its first block only (a Parquet file's from its footer, a
    database result's from the server's description of it)."""
    from kfmlops import warehouse

    if warehouse.is_sql(uri):
        return warehouse.column_names(uri, config)
    fmt = detect_format(uri, config.format)
    check_file(uri)
    fs, path = open_filesystem(uri)
    with _parse_errors(uri, fmt, config):
        if fmt == "parquet":
            with fs.open_input_file(path) as handle:
                return pq.read_schema(handle).names
        with fs.open_input_stream(path, compression="detect") as stream:
            return _stream_reader(stream, fmt, config, HEADER_BLOCK_BYTES).schema.names


def _stream_reader(stream, fmt: str, config: IngestConfig, block_size: int):
    """A pyarrow CSV or JSON Lines reader over ``stream`` with the configured parsing options."""
    if fmt == "csv":
        na = sorted({*config.na_values, *(f" {v}" for v in config.na_values)})
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=block_size),
            parse_options=pa_csv.ParseOptions(delimiter=config.delimiter),
            convert_options=pa_csv.ConvertOptions(null_values=na, strings_can_be_null=True),
        )
    return pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=block_size))


@contextmanager
def _parse_errors(uri: str, fmt: str, config: IngestConfig) -> Iterator[None]:
    """pyarrow's parse errors as one-line IngestErrors naming the file."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        hint = f"; check ingest.delimiter ({config.delimiter!r}) and quoting" if fmt == "csv" else ""
        raise IngestError(f"{uri!r} could not be parsed as {fmt}: {' '.join(str(exc).split())}{hint}") from None


def normalise_column(array: pa.Array, na_values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    if pa.types.is_string(array.type):
        array = pc.utf8_trim_whitespace(array)
        array = pc.if_else(pc.is_in(array, value_set=na_values), pa.scalar(None, pa.string()), array)
    elif pa.types.is_integer(array.type):
        array = array.cast(pa.int64())
    elif pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        array = array.cast(pa.float64())
    return array


def _uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of each key (splitmix64) as a float in [0, 1)."""
    with np.errstate(over="ignore"):  # splitmix64 relies on wrap-around
        x = keys.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class StratifiedSplit:
    """The seeded, stratified test split, fed each row's class key (an int64, see
    :meth:`kfmlops.labels.LabelCoder.split_keys`) in file order one batch at a time.

    The rows of each class are numbered in file order and cut into windows of about ``1 / fraction``
    rows (window ``j`` holds the ranks ``k`` with ``floor(k * fraction) == j``); one row of each
    window, picked by a hash of (seed, class, window), is a test row. So each class of ``n`` rows
    gives ``floor(n * fraction)`` or ``ceil(n * fraction)`` test rows, and the split depends on the
    labels in file order only, not on how they are batched.
    """

    def __init__(self, seed: int, fraction: float):
        ratio = Fraction(fraction).limit_denominator(1_000_000)
        self.seed, self.num, self.den = seed, ratio.numerator, ratio.denominator
        self.seen: Counter = Counter()

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        """Whether each row of the next batch is a test row."""
        keys = np.asarray(keys, dtype=np.int64)
        mask = np.zeros(len(keys), dtype=bool)
        for cls in np.unique(keys).tolist():
            rows = np.flatnonzero(keys == cls)
            ranks = self.seen[cls] + np.arange(len(rows), dtype=np.int64)
            self.seen[cls] += len(rows)
            window = ranks * self.num // self.den
            start = (window * self.den + self.num - 1) // self.num  # ceil(window / fraction)
            end = ((window + 1) * self.den + self.num - 1) // self.num
            picked = start + (_uniform(window * 2 + cls, self.seed) * (end - start)).astype(np.int64)
            mask[rows] = ranks == picked
        return mask


def in_test_split(keys: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Which rows of a whole table (its class keys, in file order) ingest's stratified split puts in the test split."""
    return StratifiedSplit(seed, fraction)(np.asarray(keys))


def held_out_rows(labels: pa.Array | pa.ChunkedArray, task: Task, seed: int, fraction: float) -> np.ndarray:
    """Which rows of a whole normalised table (its canonical labels, in file order) ingest's split
    puts in the test split (:func:`normalised_table` gives such a table)."""
    labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    return in_test_split(split_keys(labels, task.kind, task.positive), seed, fraction)


def required_columns(data: DataSpec) -> dict[str, str]:
    """The normalised columns every source must have, each with the setting that names it."""
    return {normalise_name(data.label): "data.label",
            **{normalise_name(c): "data.sensitive_features" for c in data.sensitive_features}}


def check_columns(present: set[str], wanted: dict[str, str], uri: str) -> None:
    """An IngestError naming every ``wanted`` column (``{name: what names it}``) that ``uri`` lacks."""
    missing = [c for c in wanted if c not in present]
    if missing:
        why = "; ".join(f"{c!r} is named by {wanted[c]}" for c in missing)
        raise IngestError(
            f"{uri!r} is missing columns {missing}; it has {sorted(present)} ({why}; names are compared "
            "after normalising to snake_case)"
        )


class _Normaliser:
    """Turns raw batches into batches of one fixed, normalised schema, counting what it does to the label."""

    def __init__(self, data: DataSpec, config: IngestConfig):
        self.data = data
        self.config = config
        self.label = normalise_name(data.label)
        self.drop = {normalise_name(c) for c in config.drop_columns}
        self.na_values = pa.array([v.strip() for v in config.na_values], pa.string())
        self.schema: pa.Schema | None = None
        self.dropped_unlabelled = 0
        self.labels = LabelCoder(data)
        self.non_null: Counter = Counter()

    def __call__(self, batch: pa.RecordBatch, uri: str) -> pa.RecordBatch | None:
        names = normalised_names(batch.schema.names, uri)
        columns = {n: normalise_column(batch.column(i), self.na_values) for i, n in enumerate(names) if n not in self.drop}
        wanted = required_columns(self.data)
        if self.schema is not None:
            wanted = {**{n: "the train source" for n in self.schema.names}, **wanted}
        check_columns(set(columns), wanted, uri)
        position = list(columns).index(self.label)
        label = columns.pop(self.label)
        if pa.types.is_string(label.type):  # a blank label is a missing one
            label = pc.if_else(pc.equal(label, ""), pa.scalar(None, pa.string()), label)
        table = pa.table(columns)
        if label.null_count:
            self.dropped_unlabelled += label.null_count
            keep = pc.is_valid(label)
            table, label = table.filter(keep), label.filter(keep)
        if len(label) == 0 or pa.types.is_null(label.type):
            return None
        try:
            table = table.add_column(position, self.label, self.labels(label))
        except LabelError as exc:
            raise IngestError(f"{uri!r}: {exc}") from None
        if self.schema is None:
            self.schema = table.schema
        self.non_null.update({name: len(table) - table.column(name).null_count for name in table.column_names})
        return self._conform(table, uri).combine_chunks().to_batches()[0]

    def task(self):
        try:
            return self.labels.task(self.label)
        except LabelError as exc:
            raise IngestError(str(exc)) from None

    def check_has_values(self, uri: str) -> None:
        """Raise an IngestError naming every column that held no value in any row read so far."""
        empty = [name for name in self.schema.names if name != self.label and not self.non_null[name]]
        if empty:
            raise IngestError(
                f"{uri!r}: columns {empty} have no values (every row is null or an NA token); drop them with "
                "ingest.drop_columns or fill them in"
            )

    def _conform(self, table: pa.Table, uri: str) -> pa.Table:
        table = table.select(self.schema.names)
        if table.schema.equals(self.schema):
            return table
        for name in self.schema.names:
            want, got = self.schema.field(name).type, table.schema.field(name).type
            if got == want or pa.types.is_null(got):
                continue
            if pa.types.is_null(want) or (pa.types.is_integer(want) and pa.types.is_floating(got)):
                raise IngestError(
                    f"{uri!r}: column {name!r} changes type from {want} to {got} part-way through; "
                    "the first rows decide a column's type, so make the early rows representative "
                    "or convert the file to Parquet"
                )
        try:
            return table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise IngestError(f"{uri!r}: column types differ from the first rows: {' '.join(str(exc).split())}") from None


def normalised_table(uri: str, data: DataSpec, config: IngestConfig) -> tuple[pa.Table, Task]:
    """Every labelled row of ``uri`` normalised as :func:`ingest` normalises it, in file order, and
    the label's task; no split, no files, no fingerprint (:func:`held_out_rows` over the labels gives
    ingest's seeded test split). Holds the whole table in memory."""
    normalise = _Normaliser(data, config)
    batches = [batch for raw in source_batches(uri, data, config) if (batch := normalise(raw, uri)) is not None]
    if not batches:
        raise IngestError(f"{uri!r} has no labelled data rows")
    return pa.Table.from_batches(batches, schema=normalise.schema), normalise.task()


def ingest(data: DataSpec, config: IngestConfig, train_out: str | os.PathLike, test_out: str | os.PathLike) -> IngestResult:
    """Read ``data.source`` (and ``data.test_source``; with ``data.feature_store``, the entity rows
    joined with their features), write normalised train/test Parquet splits."""
    normalise = _Normaliser(data, config)
    sources = _Fingerprint(data)
    split = StratifiedSplit(config.seed, config.test_fraction)
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {"train": 0, "test": 0}
    labels: dict[str, _LabelTally] = {"train": _LabelTally(), "test": _LabelTally()}
    paths = {"train": str(train_out), "test": str(test_out)}

    def write(split: str, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if split not in writers:
            Path(paths[split]).parent.mkdir(parents=True, exist_ok=True)
            writers[split] = pq.ParquetWriter(paths[split], normalise.schema, compression="zstd")
        writers[split].write_batch(batch)
        counts[split] += batch.num_rows
        labels[split].add(batch.column(normalise.label))

    started = time.monotonic()
    try:
        row = 0
        for raw in sources.read(data.source, config):
            batch = normalise(raw, data.source)
            if batch is None:
                continue
            if data.test_source:
                write("train", batch)
            else:
                mask = pa.array(split(normalise.labels.split_keys(batch.column(normalise.label))))
                write("test", batch.filter(mask))
                write("train", batch.filter(pc.invert(mask)))
            row += batch.num_rows
            log.info("ingest: %d rows read from %s (%.1f s)", row, data.source, time.monotonic() - started)
        if normalise.schema is None and not normalise.dropped_unlabelled:
            raise IngestError(_no_rows(data.source))
        _check_labelled(data, data.source, row, normalise)
        normalise.check_has_values(data.source)
        if data.test_source:
            for raw in sources.read(data.test_source, config):
                batch = normalise(raw, data.test_source)
                if batch is not None:
                    write("test", batch)
    finally:
        for writer in writers.values():
            writer.close()

    task = normalise.task()
    _check_splits(data, config, task, counts, labels, normalise)
    result = IngestResult(
        train_path=paths["train"],
        test_path=paths["test"],
        train_rows=counts["train"],
        test_rows=counts["test"],
        fingerprint=sources.hexdigest(),
        label=normalise.label,
        columns={f.name: str(f.type) for f in normalise.schema},
        task=task.to_json(),
        label_counts={split: labels[split].summary(task.is_classification) for split in counts},
        dropped_unlabelled=normalise.dropped_unlabelled,
        label_mapping=normalise.labels.label_mapping(),
    )
    log.info(
        "ingest: %d train / %d test rows, fingerprint %s, %.1f s; label %r: %s task (%s), %s; %d rows without a label "
        "dropped", result.train_rows, result.test_rows, result.fingerprint[:12], time.monotonic() - started,
        data.label, task.kind, task.reason, result.label_mapping or result.label_counts["train"],
        result.dropped_unlabelled,
    )
    return result


class _LabelTally:
    """Rows per class (classification) or the running sum, min and max (regression) of one split's labels."""

    def __init__(self) -> None:
        self.classes: Counter = Counter()
        self.n, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf

    def add(self, labels: pa.Array) -> None:
        if pa.types.is_floating(labels.type):
            values = labels.to_numpy(zero_copy_only=False)
            self.n += len(values)
            self.total += float(values.sum())
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        else:
            self.classes.update(_value_counts(labels))

    def summary(self, classification: bool) -> dict[str, float | int]:
        if classification:
            return dict(sorted(self.classes.items()))
        if not self.n:
            return {"rows": 0}
        return {"rows": self.n, "mean": self.total / self.n, "min": self.low, "max": self.high}


def _no_rows(uri: str) -> str:
    from kfmlops import warehouse

    if warehouse.is_sql(uri):
        return f"{uri!r} returned no rows; check the query's conditions, or that the table holds data"
    return f"{uri!r} has a header but no data rows; name a file with data rows"


def _check_labelled(data: DataSpec, uri: str, rows: int, normalise: _Normaliser) -> None:
    if rows == 0:
        raise IngestError(
            f"{uri!r}: every row's label {data.label!r} is missing ({normalise.dropped_unlabelled} rows null, blank "
            f"or one of ingest.na_values {list(normalise.config.na_values)}); check data.label names the label column"
        )


def _check_splits(data: DataSpec, config: IngestConfig, task, counts: dict[str, int],
                  labels: dict[str, _LabelTally], normalise: _Normaliser) -> None:
    """Classification: the train split needs MIN_TRAIN_ROWS_PER_CLASS rows of each class and (binary)
    the test split one; regression: MIN_REGRESSION_ROWS train rows, a label that varies, a test row."""
    if data.test_source and counts["test"] == 0:
        _check_labelled(data, data.test_source, 0, normalise)
    if not task.is_classification:
        train = labels["train"]
        if train.n < MIN_REGRESSION_ROWS:
            raise IngestError(
                f"label {data.label!r}: the train split has {train.n} rows; a regression task needs at least "
                f"{MIN_REGRESSION_ROWS}"
            )
        if train.low == train.high:
            raise IngestError(f"label {data.label!r} is {train.low} in every train row: there is nothing to learn")
        if counts["test"] == 0:
            raise IngestError(f"label {data.label!r}: the test split is empty; lower ingest.test_fraction's rows or "
                              "give data.test_source")
        return
    for split in counts:
        need = MIN_TRAIN_ROWS_PER_CLASS if split == "train" else (1 if task.kind == "binary" else 0)
        for cls in task.classes:
            k = labels[split].classes[cls]
            if k >= need:
                continue
            if data.test_source:
                where = data.test_source if split == "test" else data.source
                raise IngestError(
                    f"label {data.label!r}: the {split} split ({where!r}) has {k} {cls!r} rows and needs at least "
                    f"{need} of each class; add {cls!r} rows to it"
                )
            total = labels["train"].classes[cls] + labels["test"].classes[cls]
            raise IngestError(
                f"label {data.label!r}: class {cls!r} is too rare to split: {total} rows in {data.source!r}, {k} of "
                f"them in the {split} split, which needs at least {need} (ingest.test_fraction {config.test_fraction} "
                f"puts about one row of each class in {1 / config.test_fraction:.3g} in the test split): add {cls!r} "
                "rows, drop them (ingest.na_values), or give data.test_source"
            )


def _value_counts(values: pa.Array) -> Counter:
    """Rows of each value, keyed by its text."""
    if len(values) == 0:
        return Counter()
    return Counter({str(v["values"]): v["counts"] for v in pc.value_counts(values).to_pylist()})

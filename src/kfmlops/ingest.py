"""Ingest: raw CSV / Parquet / JSON Lines in, normalised train and test Parquet splits out.

Consumes a :class:`~kfmlops.config.DataSpec` (where the data is, the label, the sensitive columns)
and an :class:`~kfmlops.config.IngestConfig`; produces two Parquet files and an
:class:`IngestResult` (row counts, schema, label balance and a SHA-256 fingerprint of the source
bytes for lineage).

Data is read and written one record batch at a time, so memory stays bounded by the block size
whatever the file size. Column names are normalised to ``snake_case``, strings are trimmed and
NA tokens become nulls, the label becomes ``0``/``1`` (``int8``), and rows are assigned to the
test split by a seeded hash of their row number, so the split does not depend on block sizes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from kfmlops.config import DataSpec, IngestConfig

log = logging.getLogger(__name__)

LABEL_TYPE = pa.int8()
_FORMATS_BY_SUFFIX = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zst", ".lz4"}


class IngestError(ValueError):
    """The input cannot be ingested; the message names the file, column or setting at fault."""


@dataclass(frozen=True)
class IngestResult:
    train_path: str
    test_path: str
    train_rows: int
    test_rows: int
    fingerprint: str
    label: str
    columns: dict[str, str]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped_unlabelled: int = 0


def normalise_name(name: str) -> str:
    """``" Education-Num"`` -> ``"education_num"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


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


def fingerprint(uris: list[str], chunk: int = 4 << 20) -> str:
    """SHA-256 over the stored bytes of each file, in order: the dataset identity recorded in lineage."""
    digest = hashlib.sha256()
    for uri in uris:
        fs, path = open_filesystem(uri)
        with fs.open_input_stream(path, compression=None) as stream:
            while block := stream.read(chunk):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_batches(uri: str, config: IngestConfig) -> Iterator[pa.RecordBatch]:
    """Raw record batches from one file, with bounded memory."""
    fmt = detect_format(uri, config.format)
    fs, path = open_filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise IngestError(f"cannot read {uri!r}: {exc}") from None
    if info.type != pa_fs.FileType.File:
        raise IngestError(f"no such file: {uri!r}")
    if info.size == 0:
        raise IngestError(f"{uri!r} is empty (0 bytes)")
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=65_536)
            return
        with fs.open_input_stream(path, compression="detect") as stream:
            if fmt == "csv":
                na = sorted({*config.na_values, *(f" {v}" for v in config.na_values)})
                reader = pa_csv.open_csv(
                    stream,
                    read_options=pa_csv.ReadOptions(block_size=config.block_size_bytes),
                    parse_options=pa_csv.ParseOptions(delimiter=config.delimiter),
                    convert_options=pa_csv.ConvertOptions(null_values=na, strings_can_be_null=True),
                )
            else:
                reader = pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=config.block_size_bytes))
            yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise IngestError(f"{uri!r} could not be parsed as {fmt}: {exc}") from None


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
    elif pa.types.is_floating(array.type):
        array = array.cast(pa.float64())
    return array


def label_to_int(array: pa.Array, positive: list, label: str) -> pa.Array:
    if pa.types.is_string(array.type):
        values = pa.array([str(v) for v in positive], pa.string())
    elif pa.types.is_boolean(array.type):
        values = pa.array([v for v in positive if isinstance(v, bool) or v in (0, 1)], pa.bool_())
    elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        numeric = [v for v in positive if isinstance(v, (int, float)) and not isinstance(v, bool)]
        numeric += [float(v) for v in positive if isinstance(v, str) and _is_number(v)]
        values = pa.array(numeric, pa.float64()).cast(array.type, safe=False)
    else:
        raise IngestError(f"label column {label!r} has type {array.type}; expected strings, numbers or booleans")
    return pc.is_in(array, value_set=values).cast(LABEL_TYPE)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def in_test_split(row_numbers: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Seeded, order-independent split: row ``i`` is a test row iff ``hash(seed, i) < fraction``."""
    with np.errstate(over="ignore"):  # splitmix64 relies on wrap-around
        x = row_numbers.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class _Normaliser:
    """Turns raw batches into batches of one fixed, normalised schema."""

    def __init__(self, data: DataSpec, config: IngestConfig):
        self.data = data
        self.config = config
        self.label = normalise_name(data.label)
        self.drop = {normalise_name(c) for c in config.drop_columns}
        self.na_values = pa.array([v.strip() for v in config.na_values], pa.string())
        self.schema: pa.Schema | None = None
        self.dropped_unlabelled = 0

    def __call__(self, batch: pa.RecordBatch, uri: str) -> pa.RecordBatch:
        names = [normalise_name(n) for n in batch.schema.names]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise IngestError(f"{uri!r}: columns {duplicates} collide after normalising names")
        columns = {n: normalise_column(batch.column(i), self.na_values) for i, n in enumerate(names) if n not in self.drop}
        self._check_columns(set(columns), uri)
        label = columns.pop(self.label)
        unlabelled = label.null_count
        columns[self.label] = label_to_int(label, self.data.positive_labels, self.label)
        table = pa.table(columns)
        if unlabelled:
            self.dropped_unlabelled += unlabelled
            table = table.filter(pc.is_valid(label))
        if self.schema is None:
            self.schema = table.schema
        return self._conform(table, uri).combine_chunks().to_batches()[0] if table.num_rows else None

    def _check_columns(self, present: set[str], uri: str) -> None:
        required = [self.label, *(normalise_name(c) for c in self.data.sensitive_features)]
        if self.schema is not None:
            required += self.schema.names
        missing = [c for c in dict.fromkeys(required) if c not in present]
        if missing:
            raise IngestError(f"{uri!r} is missing columns {missing}; it has {sorted(present)}")

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
            raise IngestError(f"{uri!r}: column types differ from the first rows: {exc}") from None


def normalised_table(uri: str, data: DataSpec, config: IngestConfig) -> tuple[pa.Table, str]:
    """Every labelled row of ``uri`` normalised as :func:`ingest` normalises it, in file order, and
    the label's column name; no split, no files, no fingerprint (``in_test_split`` over the row
    numbers gives ingest's seeded test split). Holds the whole table in memory."""
    normalise = _Normaliser(data, config)
    batches = [batch for raw in read_batches(uri, config) if (batch := normalise(raw, uri)) is not None]
    if not batches:
        raise IngestError(f"{uri!r} has no labelled data rows")
    return pa.Table.from_batches(batches, schema=normalise.schema), normalise.label


def ingest(data: DataSpec, config: IngestConfig, train_out: str | os.PathLike, test_out: str | os.PathLike) -> IngestResult:
    """Read ``data.source`` (and ``data.test_source``), write normalised train/test Parquet splits."""
    normalise = _Normaliser(data, config)
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {"train": 0, "test": 0}
    positives = {"train": 0, "test": 0}
    paths = {"train": str(train_out), "test": str(test_out)}

    def write(split: str, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if split not in writers:
            Path(paths[split]).parent.mkdir(parents=True, exist_ok=True)
            writers[split] = pq.ParquetWriter(paths[split], normalise.schema, compression="zstd")
        writers[split].write_batch(batch)
        counts[split] += batch.num_rows
        positives[split] += pc.sum(batch.column(normalise.label)).as_py() or 0

    started = time.monotonic()
    try:
        row = 0
        for raw in read_batches(data.source, config):
            batch = normalise(raw, data.source)
            if batch is None:
                continue
            if data.test_source:
                write("train", batch)
            else:
                mask = pa.array(in_test_split(np.arange(row, row + batch.num_rows), config.seed, config.test_fraction))
                write("test", batch.filter(mask))
                write("train", batch.filter(pc.invert(mask)))
            row += batch.num_rows
            log.info("ingest: %d rows read from %s (%.1f s)", row, data.source, time.monotonic() - started)
        if normalise.schema is None:
            raise IngestError(f"{data.source!r} has a header but no data rows")
        if data.test_source:
            for raw in read_batches(data.test_source, config):
                batch = normalise(raw, data.test_source)
                if batch is not None:
                    write("test", batch)
    finally:
        for writer in writers.values():
            writer.close()

    _check_splits(data, counts, positives)
    result = IngestResult(
        train_path=paths["train"],
        test_path=paths["test"],
        train_rows=counts["train"],
        test_rows=counts["test"],
        fingerprint=fingerprint([u for u in (data.source, data.test_source) if u]),
        label=normalise.label,
        columns={f.name: str(f.type) for f in normalise.schema},
        label_counts={
            split: {"positive": positives[split], "negative": counts[split] - positives[split]} for split in counts
        },
        dropped_unlabelled=normalise.dropped_unlabelled,
    )
    log.info(
        "ingest: %d train / %d test rows, fingerprint %s, %.1f s",
        result.train_rows, result.test_rows, result.fingerprint[:12], time.monotonic() - started,
    )
    return result


def _check_splits(data: DataSpec, counts: dict[str, int], positives: dict[str, int]) -> None:
    for split, n in counts.items():
        if n == 0:
            where = data.test_source if split == "test" and data.test_source else data.source
            raise IngestError(f"the {split} split is empty: {where!r} gave no labelled rows for it")
        if positives[split] in (0, n):
            only = "positive" if positives[split] else "negative"
            raise IngestError(
                f"label {data.label!r} has one class in the {split} split (all {n} rows {only}); "
                f"check positive_labels={list(data.positive_labels)} against the label's values"
            )

"""Content digests of Arrow data that do not depend on how the data was batched.

:class:`ArrowDigest` consumes record batches in order and produces a SHA-256 over the Arrow IPC
stream of the same rows re-cut into batches of :data:`CANONICAL_ROWS` rows (the schema message,
without schema or field metadata, then each record batch message), so two reads of the same rows
give the same digest whatever batch sizes the reader, the driver or ``ingest.block_rows`` chose.
It is the fingerprint of a database source (:mod:`kfmlops.warehouse`) and the address of a
snapshot (:mod:`kfmlops.snapshots`).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

CANONICAL_ROWS = 65_536


class ArrowDigest:
    """Feed batches with :meth:`update` (all of one schema), then read :meth:`hexdigest`.

    ``sink``: a hashlib object to feed instead of a fresh SHA-256 (ingest hashes several sources
    into one fingerprint)."""

    def __init__(self, sink=None) -> None:
        self.sink = sink if sink is not None else hashlib.sha256()
        self.schema: pa.Schema | None = None
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0

    def update(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = pa.schema([f.remove_metadata() for f in batch.schema])
            self.sink.update(self.schema.serialize())
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        while self.pending_rows >= CANONICAL_ROWS:
            self._emit(CANONICAL_ROWS)

    def finish(self) -> None:
        """Hash the last, shorter batch, after the last :meth:`update` (again: nothing happens)."""
        if self.pending_rows:
            self._emit(self.pending_rows)

    def hexdigest(self) -> str:
        self.finish()
        return self.sink.hexdigest()

    def _emit(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        head, rest = table.slice(0, rows), table.slice(rows)
        self.sink.update(head.combine_chunks().to_batches()[0].serialize())
        self.pending = rest.to_batches()
        self.pending_rows = rest.num_rows
